"""Open Inference Protocol v2: the wire codec (:mod:`.wire`), inference over the request pipeline
(:mod:`.infer`), its HTTP routes and its gRPC service (``inference.GRPCInferenceService``): one more
adapter each on the request pipeline, with the same limits, errors and metrics."""

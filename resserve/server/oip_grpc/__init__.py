"""Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService``, one more adapter on the
request pipeline (same limits, errors and metrics as HTTP)."""

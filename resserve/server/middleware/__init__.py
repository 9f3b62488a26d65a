"""ASGI middleware, one per module: request ids, spans, request metrics, access, body limits."""

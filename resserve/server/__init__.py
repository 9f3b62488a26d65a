"""The HTTP server: the Open Inference Protocol v2 codec and, around it, the FastAPI app."""

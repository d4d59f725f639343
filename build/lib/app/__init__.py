"""The FastAPI inference service."""

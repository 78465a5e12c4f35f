"""The HTTP doors: an OpenAI-compatible API served by FastAPI + uvicorn."""

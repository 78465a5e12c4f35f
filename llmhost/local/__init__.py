"""The local backend: chat, completions and embeddings on the resident models."""

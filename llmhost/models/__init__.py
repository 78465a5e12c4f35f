"""Model files: GGUF validation, registry and the embedded default model."""

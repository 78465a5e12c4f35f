"""The inference engine: a continuous-batching scheduler over one llama.cpp context per model."""

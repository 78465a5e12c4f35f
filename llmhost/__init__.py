"""llmhost: a self-hosted, local-first LLM platform with real llama.cpp inference."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

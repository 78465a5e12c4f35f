"""Backends behind one protocol: the local engine and remote OpenAI-compatible, Anthropic and Ollama APIs."""

"""The llmhost exception tree.

Every error that crosses a module boundary is one of these; lower-layer errors (llama.cpp, the OS, sqlite)
are mapped to the most specific one with ``raise ... from exc``. The HTTP layer turns them into OpenAI's
error envelope in one place (``llmhost.api.errors``), the CLI into one line and a non-zero exit.

    LLMHostError
    ├── ConfigError                 settings file / environment could not be validated
    ├── ModelError                  a model file is missing, unreadable or not a valid GGUF
    │   └── ModelNotFoundError      no model registered under that name            (HTTP 404)
    ├── RequestError                the request itself is invalid                  (HTTP 400)
    │   └── ContextLengthError      prompt (+ max_tokens) exceeds the context      (HTTP 400)
    ├── EngineError                 inference failed inside llama.cpp              (HTTP 500)
    │   ├── EngineOverloadedError   the wait queue is full                         (HTTP 429)
    │   └── NotReadyError           the model is still loading                     (HTTP 503)
    ├── ConflictError               the action clashes with current state           (HTTP 409)
    └── AuthError                   missing or wrong API key                       (HTTP 401)
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConfigError",
    "ConflictError",
    "ContextLengthError",
    "EngineError",
    "EngineOverloadedError",
    "LLMHostError",
    "ModelError",
    "ModelNotFoundError",
    "NotReadyError",
    "RequestError",
]


class LLMHostError(Exception):
    """Base of every error llmhost raises on purpose."""


class ConfigError(LLMHostError):
    """The configuration could not be loaded or validated."""


class ModelError(LLMHostError):
    """A model file is missing, unreadable, or not a valid GGUF model."""


class ModelNotFoundError(ModelError):
    """No model is registered under the requested name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found; run `llmhost list` to see the available models")
        self.name = name


class RequestError(LLMHostError):
    """The request is invalid; ``param`` names the offending field when there is one."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ContextLengthError(RequestError):
    """The prompt, plus the requested completion, does not fit in the model's context window."""

    def __init__(self, requested: int, allowed: int, prompt_tokens: int, max_tokens: int | None) -> None:
        detail = f"{prompt_tokens} in the prompt"
        if max_tokens is not None:
            detail += f", {max_tokens} in the completion"
        super().__init__(
            f"This model's maximum context length is {allowed} tokens. However, you requested "
            f"{requested} tokens ({detail}). Please reduce the length of the prompt or completion.",
            param="messages",
            code="context_length_exceeded",
        )
        self.requested = requested
        self.allowed = allowed


class EngineError(LLMHostError):
    """Inference failed inside the engine."""


class EngineOverloadedError(EngineError):
    """Every slot is busy and the wait queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReadyError(EngineError):
    """The server or model is not ready to serve yet (still loading)."""


class ConflictError(LLMHostError):
    """The action conflicts with the current state (e.g. unloading a model that is serving requests)."""


class AuthError(LLMHostError):
    """The request carries no API key, or a wrong one."""

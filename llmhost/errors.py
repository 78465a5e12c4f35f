"""The llmhost exception tree.

Every error that crosses a module boundary is one of these; lower-layer errors (llama.cpp, the OS, sqlite)
are mapped to the most specific one with ``raise ... from exc``. Each door turns them into its dialect's
own error envelope (through :func:`classify`), the CLI into one line and a non-zero exit.

    LLMHostError
    ├── ConfigError                 settings file / environment could not be validated
    ├── ModelError                  a model file is missing, unreadable or not a valid GGUF
    │   ├── ModelNotFoundError      no model registered under that name            (HTTP 404)
    │   └── InvalidModelFileError   not a GGUF llama.cpp can load; also a RequestError (HTTP 400)
    ├── RequestError                the request itself is invalid                  (HTTP 400)
    │   └── ContextLengthError      prompt (+ max_tokens) exceeds the context      (HTTP 400)
    ├── EngineError                 inference failed inside llama.cpp              (HTTP 500)
    │   ├── EngineOverloadedError   the wait queue is full                         (HTTP 429)
    │   └── NotReadyError           the model is still loading                     (HTTP 503)
    ├── ConflictError               the action clashes with current state           (HTTP 409)
    ├── NotFoundError               no such object (a stored response, ...)         (HTTP 404)
    ├── AuthError                   missing or wrong API key                       (HTTP 401)
    ├── RefusedError                a pipeline stage refused the request            (HTTP 403)
    ├── RateLimitError              a key's rate limit or budget is used up         (HTTP 429)
    └── ProviderError               a backend failed; ``retryable`` for the router  (HTTP 502)
        ├── ProviderConnectionError  could not connect                             (HTTP 502)
        ├── ProviderTimeoutError     connect / first-token / total timeout          (HTTP 504)
        ├── ProviderHTTPError        the backend answered an error status    (its 4xx, else 502)
        └── ProviderStreamError      a stream broke after it had started

Each door renders :func:`classify`'s dialect-neutral :class:`ErrorInfo` in its own envelope.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AuthError",
    "ConfigError",
    "ConflictError",
    "ContextLengthError",
    "EngineError",
    "EngineOverloadedError",
    "ErrorInfo",
    "InvalidModelFileError",
    "LLMHostError",
    "ModelError",
    "ModelNotFoundError",
    "NotFoundError",
    "NotReadyError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderHTTPError",
    "ProviderStreamError",
    "ProviderTimeoutError",
    "RateLimitError",
    "RefusedError",
    "RequestError",
    "classify",
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


class InvalidModelFileError(ModelError, RequestError):
    """The file is not a GGUF model llama.cpp can load (not GGUF, truncated, inconsistent header ...).

    A :class:`ModelError` like every model-file problem, and a :class:`RequestError` because the file is
    what the client brought (an import, a pull, a load of what was imported): a 400 that neither falls
    back nor counts against a circuit breaker.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="invalid_model_file")


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
        self.prompt_tokens = prompt_tokens


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
    """The request carries no API key, or (``presented``) a wrong one."""

    def __init__(self, message: str, *, presented: bool = False) -> None:
        super().__init__(message)
        self.presented = presented


class NotFoundError(LLMHostError):
    """The object asked for (a stored response, ...) does not exist."""

    def __init__(self, message: str, param: str | None = None, code: str = "not_found") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class RefusedError(LLMHostError):
    """A pipeline stage (policy, scopes, ...) refused the request."""

    def __init__(self, message: str, code: str = "refused") -> None:
        super().__init__(message)
        self.code = code


class RateLimitError(LLMHostError):
    """A key's requests or tokens per minute, or its budget, are used up (429, with ``headers`` such as
    ``Retry-After`` and OpenAI's ``x-ratelimit-*``)."""

    def __init__(
        self, message: str, *, code: str = "rate_limit_exceeded", headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.code = code
        self.headers = dict(headers or {})


class ProviderError(LLMHostError):
    """A backend failed. Messages never contain credentials."""

    retryable: bool = True

    def __init__(self, message: str, *, provider: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status


class ProviderConnectionError(ProviderError):
    """Could not connect (refused, DNS, TLS, reset before a response)."""


class ProviderTimeoutError(ProviderError):
    """Connect, first-token or total timeout."""


class ProviderHTTPError(ProviderError):
    """The backend answered with an error status; 429 and 5xx are retryable, other 4xx are not."""

    def __init__(
        self, message: str, *, provider: str = "", status: int, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, provider=provider, status=status)
        self.body = body
        self.retryable = status == 429 or status >= 500


class ProviderStreamError(ProviderError):
    """A stream broke after it had started (tokens were already sent)."""


ErrorKind = Literal[
    "invalid_request",
    "authentication",
    "permission",
    "not_found",
    "conflict",
    "too_large",
    "rate_limit",
    "overloaded",
    "timeout",
    "upstream",
    "server",
]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error as every dialect needs it: status, a kind each door maps to its own type names, the
    message, OpenAI's ``param``/``code`` where known, and extra headers (``Retry-After``)."""

    status: int
    kind: ErrorKind
    message: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Figures a door may word the message with in its own dialect (a context overflow's token counts).
    facts: dict[str, int] = field(default_factory=dict)


def classify(exc: BaseException) -> ErrorInfo:
    """The one mapping from an exception to a status; a client mistake is never a 5xx."""
    msg = str(exc)
    if isinstance(exc, ProviderError):
        where = f"upstream {exc.provider}" if exc.provider else "upstream"
        if isinstance(exc, ProviderTimeoutError):
            return ErrorInfo(504, "timeout", f"{where} timed out: {msg}", code="upstream_timeout")
        if isinstance(exc, ProviderHTTPError) and exc.status is not None and 400 <= exc.status < 500:
            if exc.status == 429:
                return ErrorInfo(429, "rate_limit", msg, code="upstream_error", headers={"Retry-After": "1"})
            kind: ErrorKind = {401: "authentication", 403: "permission", 404: "not_found"}.get(
                exc.status, "invalid_request"
            )  # type: ignore[assignment]
            return ErrorInfo(exc.status, kind, msg, code="upstream_error")
        return ErrorInfo(502, "upstream", f"{where} failed: {msg}", code="upstream_error")
    if isinstance(exc, ModelNotFoundError):
        return ErrorInfo(404, "not_found", msg, "model", "model_not_found")
    if isinstance(exc, ContextLengthError):
        facts = {"prompt_tokens": exc.prompt_tokens, "allowed": exc.allowed, "requested": exc.requested}
        return ErrorInfo(400, "invalid_request", msg, exc.param, exc.code, facts=facts)
    if isinstance(exc, RequestError):
        return ErrorInfo(400, "invalid_request", msg, exc.param, exc.code)
    if isinstance(exc, NotFoundError):
        return ErrorInfo(404, "not_found", msg, exc.param, exc.code)
    if isinstance(exc, ConflictError):
        return ErrorInfo(409, "conflict", msg, "model", "conflict")
    if isinstance(exc, AuthError):
        # RFC 6750's challenge; a key that was sent and is wrong is an invalid token (section 3.1).
        challenge = 'Bearer realm="llmhost"' + (', error="invalid_token"' if exc.presented else "")
        return ErrorInfo(
            401, "authentication", msg, None, "invalid_api_key", headers={"WWW-Authenticate": challenge}
        )
    if isinstance(exc, RefusedError):
        return ErrorInfo(403, "permission", msg, None, exc.code)
    if isinstance(exc, RateLimitError):
        return ErrorInfo(429, "rate_limit", msg, None, exc.code, exc.headers)
    if isinstance(exc, EngineOverloadedError):
        return ErrorInfo(
            429, "overloaded", msg, None, "rate_limit_exceeded", {"Retry-After": str(exc.retry_after)}
        )
    if isinstance(exc, NotReadyError):
        return ErrorInfo(503, "overloaded", msg, None, "service_unavailable", {"Retry-After": "1"})
    if isinstance(exc, ModelError):
        return ErrorInfo(500, "server", msg, "model", "model_error")
    if isinstance(exc, EngineError):
        return ErrorInfo(500, "server", msg, None, "engine_error")
    return ErrorInfo(500, "server", "internal server error")

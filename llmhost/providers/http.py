"""HTTP plumbing shared by the remote providers: one pooled client, timeouts, error mapping, SSE.

Every remote provider owns one :class:`UpstreamClient` (a keep-alive pool, ``providers/wire.py``) and
speaks through two calls: :meth:`UpstreamClient.request_json` for one JSON answer and
:meth:`UpstreamClient.stream` for a streamed one, whose lines a provider-specific *decoder* turns into
:class:`~llmhost.core.types.Delta` objects. The client, not the decoders, owns the failure rules:

- **Timeouts** (:class:`Timeouts`): ``connect`` is the pool's connect timeout; ``first_token`` bounds the time
  from sending a streamed request to the decoder's first delta; ``total`` bounds the whole call.
  Both are ``asyncio`` deadlines around each wait, never around a ``yield``, so a slow *consumer* is
  never cancelled by them.
- **The first delta is the first output.** Decoders yield nothing for content-free preamble (a role-only
  chunk, Anthropic's ``message_start``, a ``ping``): only text, tool-call fragments, logprobs, a finish
  or the usage, so "nothing yielded yet" means "nothing the client could have seen": the router may
  still retry or fall back. Until then failures are :class:`ProviderConnectionError`,
  :class:`ProviderTimeoutError` or :class:`ProviderHTTPError` (an in-band error event maps to the status
  its type implies); after it, every failure, total timeout included, is :class:`ProviderStreamError`.
- **Bounded answers.** A non-streamed body over 64 MiB, a streamed line or SSE event over 16 MiB, and any
  malformed HTTP framing are provider errors, not memory growth or a guessed body.
- **Credentials never leave.** Each client knows its secrets and scrubs them from every message and
  error body it builds; nothing here logs headers.

A request a backend cannot take (``n`` > 1 where the API has no such field, token-id prompts for a text
API, ...) is refused with :class:`~llmhost.errors.RequestError` before any connection is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

from llmhost.core.types import InferenceRequest
from llmhost.errors import ConfigError, RequestError
from llmhost.providers.base import (
    ProviderConnectionError,
    ProviderError,
    ProviderHTTPError,
    ProviderStreamError,
    ProviderTimeoutError,
)
from llmhost.providers.wire import (
    MAX_LINE_BYTES,
    ConnectError,
    ConnectTimeout,
    WireClient,
    WireError,
    reason_phrase,
    size_text,
)

__all__ = [
    "HEALTH_TIMEOUT",
    "Timeouts",
    "UpstreamClient",
    "UpstreamHTTPError",
    "UpstreamProvider",
    "UpstreamReportedError",
    "error_message",
    "in_band_error",
    "iter_sse",
    "resolve_secret",
    "status_for_error_type",
]

logger = logging.getLogger("llmhost.providers")

T = TypeVar("T")
E = TypeVar("E", bound=ProviderError)
Decoder = Callable[[AsyncIterator[str]], AsyncGenerator[T, None]]

_MALFORMED = (KeyError, IndexError, TypeError, AttributeError, ValueError)
HEALTH_TIMEOUT = 3.0  # seconds; a health probe is a liveness check, not a request
_REDACTED = "***"
_SENSITIVE_HEADER_WORDS = ("auth", "key", "token", "secret", "cookie", "password")

# Error ``type`` strings of OpenAI's and Anthropic's envelopes -> the HTTP status they stand for. Used when
# an error arrives in-band (inside a 200 stream), where there is no status line to go by.
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Time limits for one upstream target, in seconds.

    ``connect``: establishing the TCP (and TLS) connection. ``first_token``: from sending a streamed
    request to its first output delta. ``total``: the whole call, streamed or not.
    """

    connect: float = 5
    first_token: float = 60
    total: float = 600

    def __post_init__(self) -> None:
        for field_name in ("connect", "first_token", "total"):
            if not getattr(self, field_name) > 0:
                raise ConfigError(f"timeouts.{field_name} must be a positive number of seconds")


def resolve_secret(
    api_key: str | None = None, api_key_env: str | None = None, api_key_file: Path | None = None
) -> str | None:
    """The credential from exactly one source: a literal, an environment variable's name, or a file.

    ``None`` when no source is given. A named variable that is unset or empty, or a file that is
    missing or empty, is a :class:`ConfigError` (whose message never includes the value).
    """
    given = [
        name
        for name, value in (
            ("api_key", api_key),
            ("api_key_env", api_key_env),
            ("api_key_file", api_key_file),
        )
        if value
    ]
    if len(given) > 1:
        raise ConfigError(f"give only one of api_key, api_key_env, api_key_file (got {', '.join(given)})")
    if api_key:
        return api_key
    if api_key_env:
        value = os.environ.get(api_key_env, "").strip()
        if not value:
            raise ConfigError(f"environment variable {api_key_env} (api_key_env) is not set or is empty")
        return value
    if api_key_file:
        path = Path(api_key_file).expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read api_key_file {path}: {exc.strerror or exc}") from None
        if not value:
            raise ConfigError(f"api_key_file {path} is empty")
        return value
    return None


class UpstreamHTTPError(ProviderHTTPError):
    """A :class:`ProviderHTTPError` that also carries the upstream's ``Retry-After``, in seconds."""

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, status=status, body=body)
        self.retry_after = retry_after


class UpstreamReportedError(Exception):
    """Raised by a decoder when the upstream reports an error in-band, or its stream is malformed.

    :meth:`UpstreamClient.stream` turns it into a :class:`ProviderHTTPError` with ``status`` if no delta
    was yielded yet, else into a :class:`ProviderStreamError`.
    """

    def __init__(self, message: str, status: int = 502, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body


def status_for_error_type(error_type: object, default: int = 502) -> int:
    """The HTTP status an OpenAI/Anthropic error ``type`` (or numeric ``code``) stands for."""
    if isinstance(error_type, int) and 400 <= error_type < 600:
        return error_type
    if isinstance(error_type, str):
        if error_type.isdigit() and 400 <= int(error_type) < 600:
            return int(error_type)
        return _ERROR_TYPE_STATUS.get(error_type, default)
    return default


def error_message(body: object) -> str | None:
    """The human message inside an error body: OpenAI's and Anthropic's envelopes, Ollama's, FastAPI's."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        return message if isinstance(message, str) else None
    if isinstance(error, str):
        return error
    for key in ("message", "detail"):
        if isinstance(body.get(key), str):
            return str(body[key])
    return None


def in_band_error(body: dict[str, Any]) -> UpstreamReportedError:
    """An error object received inside a 200 stream (OpenAI, Anthropic or Ollama shape)."""
    error = body.get("error")
    status = 502
    if isinstance(error, dict):
        status = status_for_error_type(error.get("code"), 0) or status_for_error_type(error.get("type"), 502)
    message = error_message(body) or "unknown error"
    return UpstreamReportedError(f"upstream reported an error: {message}", status, body)


async def iter_sse(lines: AsyncIterator[str]) -> AsyncGenerator[tuple[str, str], None]:
    """Server-sent events as ``(event, data)`` pairs, per the WHATWG parsing rules.

    Multi-line ``data`` is joined with newlines, comments (``:``) and ``id``/``retry`` are skipped, the
    event name defaults to ``message``, and an event cut off before its blank line is dropped. An event
    whose data grows past ``MAX_LINE_BYTES`` characters is :class:`UpstreamReportedError`: the line cap
    alone would not stop a stream of short ``data`` lines that never ends its event.
    """
    event = ""
    data: list[str] = []
    size = 0
    async for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data)
                data, size = [], 0
            event = ""
            continue
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            size += len(value) + 1
            if size > MAX_LINE_BYTES:
                raise UpstreamReportedError(f"stream sent an event larger than {size_text(MAX_LINE_BYTES)}")
            data.append(value)
        elif name == "event":
            event = value


def _retry_after(headers: Mapping[str, str]) -> float | None:
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def _sensitive_header_values(headers: Mapping[str, str]) -> list[str]:
    return [
        value
        for name, value in headers.items()
        if any(word in name.lower() for word in _SENSITIVE_HEADER_WORDS)
    ]


class UpstreamClient:
    """One provider's connection pool to its upstream, with its timeouts, error mapping and secrets.

    ``secrets`` (the API key, sensitive header values) are replaced by ``***`` in every message and
    error body this client builds. ``base_url`` may carry a path prefix (``http://host/v1``); request
    paths are joined to it.
    """

    __slots__ = ("_secrets", "base_url", "client", "provider", "timeouts")

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        secrets: Iterable[str | None] = (),
        max_connections: int = 64,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts
        self._secrets = tuple(
            sorted({s for s in (*secrets, *_sensitive_header_values(headers)) if s}, key=len, reverse=True)
        )
        # Only connect is the pool's job: first-token and total deadlines are asyncio's (see module doc).
        # HTTP/1.1 keep-alive; one pooled connection per in-flight request, up to the gateway's concurrency.
        try:
            self.client = WireClient(
                self.base_url,
                headers=headers,
                connect_timeout=timeouts.connect,
                max_connections=max_connections,
                keepalive_expiry=30,
            )
        except ValueError as exc:
            raise ConfigError(f"{provider}: {self.scrub(str(exc))}") from None

    def __repr__(self) -> str:
        return f"UpstreamClient(provider={self.provider!r}, base_url={self.scrub(self.base_url)!r})"

    # -- secrets ---------------------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text

    def scrub_json(self, value: Any) -> Any:
        """A copy of a decoded JSON value with every secret inside its strings replaced by ``***``."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {self.scrub(str(k)): self.scrub_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub_json(v) for v in value]
        return value

    # -- errors ----------------------------------------------------------------------------------------

    def _fail(self, error: E) -> E:
        logger.debug("provider %s: %s: %s", self.provider, type(error).__name__, error)
        return error

    def transport_error(self, exc: WireError) -> ProviderError:
        """A transport failure before any output: connect refused/timeout, reset, malformed or oversized
        answer. All are :class:`ProviderConnectionError` but a connect timeout."""
        detail = self.scrub(str(exc) or type(exc).__name__)
        where = self.scrub(self.base_url)
        if isinstance(exc, ConnectTimeout):
            return self._fail(
                ProviderTimeoutError(
                    f"{self.provider}: connect timeout ({self.timeouts.connect:g}s) to {where}",
                    provider=self.provider,
                )
            )
        if isinstance(exc, ConnectError):
            return self._fail(
                ProviderConnectionError(
                    f"{self.provider}: could not connect to {where}: {detail}", provider=self.provider
                )
            )
        return self._fail(
            ProviderConnectionError(
                f"{self.provider}: exchange with {where} failed before any output: {detail}",
                provider=self.provider,
            )
        )

    def status_error(self, status: int, headers: Mapping[str, str], content: bytes) -> UpstreamHTTPError:
        """An error status: the upstream's own message when its body is an error envelope."""
        body: dict[str, Any] | None = None
        try:
            parsed = json.loads(content) if content else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            body = self.scrub_json(parsed)
        detail = error_message(body)
        if detail is None:
            text = content[:300].decode("utf-8", "replace").strip()
            detail = text or reason_phrase(status) or "no detail"
        message = self.scrub(f"{self.provider}: upstream answered HTTP {status}: {detail}")
        error = UpstreamHTTPError(
            message, provider=self.provider, status=status, body=body, retry_after=_retry_after(headers)
        )
        return self._fail(error)

    def reported_error(self, exc: UpstreamReportedError) -> UpstreamHTTPError:
        """An in-band error (or malformed answer) seen before any output: an HTTP error of its status."""
        error = UpstreamHTTPError(
            self.scrub(f"{self.provider}: {exc.message}"),
            provider=self.provider,
            status=exc.status,
            body=self.scrub_json(exc.body) if exc.body is not None else None,
        )
        return self._fail(error)

    @contextlib.contextmanager
    def translating(self, what: str) -> Iterator[None]:
        """Map a malformed upstream answer met while translating it (a missing key, a wrong type) to a 502."""
        try:
            yield
        except _MALFORMED as exc:
            raise self.reported_error(
                UpstreamReportedError(f"malformed {what} from upstream ({type(exc).__name__}: {exc})")
            ) from exc

    def stream_error(self, detail: str) -> ProviderStreamError:
        return self._fail(
            ProviderStreamError(
                self.scrub(f"{self.provider}: stream broke after it started: {detail}"),
                provider=self.provider,
            )
        )

    def _timeout(self, what: str, seconds: float) -> ProviderTimeoutError:
        return self._fail(
            ProviderTimeoutError(f"{self.provider}: {what} ({seconds:g}s) exceeded", provider=self.provider)
        )

    # -- calls -----------------------------------------------------------------------------------------

    async def request_json(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """Send one request, return its decoded JSON answer; ``timeout`` defaults to ``total``."""
        limit = self.timeouts.total if timeout is None else timeout
        content = None if body is None else json.dumps(body).encode()
        try:
            async with asyncio.timeout(limit):
                response, answer = await self.client.request(method, path, content, params)
        except TimeoutError:
            raise self._timeout("total timeout", limit) from None
        except WireError as exc:
            raise self.transport_error(exc) from exc
        if response.status_code >= 400:
            raise self.status_error(response.status_code, response.headers, answer)
        try:
            return json.loads(answer)
        except ValueError as exc:
            raise self.reported_error(
                UpstreamReportedError(
                    f"upstream answered HTTP {response.status_code} with a body that is not JSON"
                )
            ) from exc

    async def stream(self, path: str, body: dict[str, Any], decode: Decoder[T]) -> AsyncGenerator[T, None]:
        """POST ``body`` and yield what ``decode`` makes of the answer's lines, under the stream rules.

        The first yielded item is the first output (see module doc): the router may time its first token
        by it, and may retry or fall back on any error raised before it.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        total_at = start + self.timeouts.total
        first_at = min(start + self.timeouts.first_token, total_at)
        first_what = ("first-token timeout", self.timeouts.first_token)
        if first_at == total_at:
            first_what = ("total timeout", self.timeouts.total)
        content = json.dumps(body).encode()
        try:
            async with asyncio.timeout_at(first_at):
                response = await self.client.send("POST", path, content)
        except TimeoutError:
            raise self._timeout(*first_what) from None
        except WireError as exc:
            raise self.transport_error(exc) from exc
        try:
            if response.status_code >= 400:
                content = b""
                try:
                    async with asyncio.timeout_at(first_at):
                        content = await response.aread()
                except (TimeoutError, WireError):
                    pass  # the status alone still says what happened
                raise self.status_error(response.status_code, response.headers, content)
            items = decode(response.aiter_lines())
            started = False
            try:
                while True:
                    try:
                        async with asyncio.timeout_at(total_at if started else first_at):
                            item = await items.__anext__()
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        if started:
                            raise self.stream_error(f"total timeout ({self.timeouts.total:g}s)") from None
                        raise self._timeout(*first_what) from None
                    except WireError as exc:
                        if started:
                            raise self.stream_error(str(exc) or type(exc).__name__) from exc
                        raise self.transport_error(exc) from exc
                    except UpstreamReportedError as exc:
                        if started:
                            raise self.stream_error(exc.message) from exc
                        raise self.reported_error(exc) from exc
                    except _MALFORMED as exc:  # the decoder met an event of an unexpected shape
                        reported = UpstreamReportedError(f"malformed stream ({type(exc).__name__}: {exc})")
                        if started:
                            raise self.stream_error(reported.message) from exc
                        raise self.reported_error(reported) from exc
                    started = True
                    yield item
            finally:
                await items.aclose()
        finally:
            await response.aclose()

    async def probe(self, path: str, timeout: float = HEALTH_TIMEOUT) -> bool:
        """Whether ``GET path`` answers 2xx within ``timeout``; never raises a provider error."""
        client = self.client
        try:
            if "://" in path and not client.same_origin(path):
                # a health URL on another host or port: its own connection, without this one's headers
                client = WireClient(path, connect_timeout=self.timeouts.connect, max_connections=1)
        except ValueError as exc:
            logger.debug("provider %s: health probe URL unusable: %s", self.provider, self.scrub(str(exc)))
            return False
        try:
            async with asyncio.timeout(min(timeout, self.timeouts.total)):
                response, _ = await client.request("GET", path)
        except (TimeoutError, WireError) as exc:
            logger.debug("provider %s: health probe failed: %s", self.provider, self.scrub(repr(exc)))
            return False
        finally:
            if client is not self.client:
                await client.aclose()
        return response.is_success

    async def aclose(self) -> None:
        await self.client.aclose()


class UpstreamProvider:
    """What every HTTP provider shares: its pooled client, a key-free repr, token counting refused (an
    upstream API with a counting endpoint overrides it), and closing."""

    name: str
    _http: UpstreamClient

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self._http.scrub(self.base_url)!r})"

    @property
    def base_url(self) -> str:
        return self._http.base_url

    @property
    def timeouts(self) -> Timeouts:
        return self._http.timeouts

    async def aclose(self) -> None:
        await self._http.aclose()

    async def count_tokens(self, request: InferenceRequest) -> int:
        raise RequestError(
            f"provider '{self.name}' does not count tokens: its API has no token counting endpoint",
            param="model",
        )

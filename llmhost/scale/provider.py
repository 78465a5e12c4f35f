"""The model replicas of a Ray Serve application behind the :class:`~llmhost.providers.base.Provider`
protocol: the ingress's gateway reaches its local models through this.

Every call goes through Serve's deployment handle with the model's name as the multiplexed model id,
so Serve routes it to a replica that already holds that model (or, when none does, to one with room to
load it). Serve's own errors are mapped to llmhost's at this boundary:

    the replica died (killed, crashed, its node lost)   -> sent again, to another replica (``retries``)
    an llmhost error raised in the replica              -> that error, unchanged (a 400 stays a 400)
    any other error in the replica                      -> EngineError (500), its text in the log only
    the replicas' queue at the ingress is full          -> EngineOverloadedError (429)
    the deployment failed to deploy                     -> NotReadyError (503)

A request that dies with its replica before any output is simply sent again. A stream that already
sent output resumes on another replica from the text it sent (:meth:`ReplicaEngine.resume`); one that
cannot (tools, a JSON format, ``n`` > 1: see :func:`~llmhost.scale.replica.resumable`) ends with
:class:`~llmhost.errors.ProviderStreamError`, which the door reports as the stream's error event.

Which replica answered goes back to the client as ``x-llmhost-replica``: the provider notes it in
:data:`ANSWERED_BY`, which :class:`ReplicaHeaderMiddleware` sets up per request.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from llmhost.core.types import Delta, Embeddings, EmbedRequest, InferenceRequest, Result
from llmhost.errors import (
    EngineError,
    EngineOverloadedError,
    LLMHostError,
    NotReadyError,
    ProviderStreamError,
)
from llmhost.scale.replica import Failure, ReplicaTag, resumable

__all__ = ["ANSWERED_BY", "REPLICA_HEADER", "ReplicaHeaderMiddleware", "ReplicaProvider"]

log = logging.getLogger(__name__)

REPLICA_HEADER = "x-llmhost-replica"
_REQUEST_ID = b"x-request-id"

ANSWERED_BY: contextvars.ContextVar[list[ReplicaTag] | None] = contextvars.ContextVar(
    "llmhost_answered_by", default=None
)
"""The replicas that worked on the current HTTP request, in order (a retry adds one)."""

# The replica is gone: another one may answer.
_REPLICA_LOST = (RayActorError, ReplicaUnavailableError)
# Errors of Serve's that are mapped to llmhost's.
_SERVE_ERRORS = (RayTaskError, BackPressureError, DeploymentUnavailableError)


def _replica_lost(exc: BaseException) -> bool:
    if isinstance(exc, RayTaskError):  # Ray may wrap an actor's death in a task error
        return isinstance(exc.cause, _REPLICA_LOST)
    return isinstance(exc, _REPLICA_LOST)


def _note(tag: ReplicaTag) -> None:
    notes = ANSWERED_BY.get()
    if notes is not None:
        notes.append(tag)


def _mapped(exc: BaseException) -> BaseException:
    """The llmhost error for an error Serve raised."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, LLMHostError):
            return cause  # the replica's own error (Ray's wrapper would put a traceback in its text)
        log.error("a replica failed: %s", exc)
        return EngineError(f"the replica failed ({type(cause).__name__})")
    if isinstance(exc, BackPressureError):
        return EngineOverloadedError("every replica is busy and the queue for them is full; retry shortly")
    if isinstance(exc, DeploymentUnavailableError):
        return NotReadyError("the model replicas failed to deploy (see the Ray Serve logs)")
    return exc


class _Progress:
    """What a stream has sent so far: what a resume needs (choice 0's text without the echo)."""

    def __init__(self, request: InferenceRequest) -> None:
        self.skip_echo = request.echo and isinstance(request.prompt, str) and bool(request.prompt)
        self.parts: list[str] = []
        self.sent = False  # any output reached the client: a retry must resume, not start again
        self.finished = False  # choice 0's finish delta went out
        self.complete = False  # the usage delta went out: nothing is missing

    def add(self, delta: Delta) -> None:
        self.sent = self.sent or bool(delta.text or delta.tool_calls or delta.logprobs or delta.finish_reason)
        if delta.index < 0 and delta.usage is not None:  # not a choice's early prompt usage
            self.complete = True
        if delta.index != 0:
            return
        if delta.text:
            if self.skip_echo:
                self.skip_echo = False
            else:
                self.parts.append(delta.text)
        if delta.finish_reason is not None:
            self.finished = True

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ReplicaProvider:
    """Local models served by a Ray Serve deployment of :class:`~llmhost.scale.ray_serve.ModelReplica`."""

    def __init__(
        self, handle: DeploymentHandle[Any], *, retries: int = 3, backoff: float = 0.1, name: str = "local"
    ) -> None:
        self.handle = handle
        self.retries = retries
        self.backoff = backoff
        self.name = name

    def _for(self, model: str, *, stream: bool = False) -> Any:
        return self.handle.options(multiplexed_model_id=model, stream=stream)

    async def _lost(self, attempt: int, exc: BaseException, what: str) -> None:
        """A replica died under a call: wait a little before the next attempt, or give up."""
        if attempt > self.retries:
            raise NotReadyError(f"the model replicas kept failing ({what}); retry shortly") from exc
        log.warning(
            "a replica died under %s (%s); sending it again (attempt %d)", what, type(exc).__name__, attempt
        )
        await asyncio.sleep(self.backoff * 2 ** (attempt - 1))

    async def _call(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """The reply of ``call``, sent again while its replica dies under it; a Failure raised."""
        attempt = 0
        while True:
            try:
                reply = await call()
            except _SERVE_ERRORS + _REPLICA_LOST as exc:
                if not _replica_lost(exc):
                    raise _mapped(exc) from None
                attempt += 1
                await self._lost(attempt, exc, what)
                continue
            if isinstance(reply, Failure):
                raise reply.error()
            return reply

    async def answer(self, request: InferenceRequest) -> Result:
        tag, result = await self._call("an answer", lambda: self._for(request.model).answer.remote(request))
        _note(tag)
        return cast(Result, result)

    async def stream(self, request: InferenceRequest) -> AsyncIterator[Delta]:
        progress = _Progress(request)
        attempt = 0
        while True:
            handle = self._for(request.model, stream=True)
            if not progress.sent:
                call = handle.stream.remote(request)
            elif resumable(request):
                call = handle.resume.remote(request, progress.text, progress.finished)
            else:
                raise ProviderStreamError(
                    "the replica serving this stream stopped after it had sent output, and a stream with "
                    "tools, a JSON format or several choices cannot resume elsewhere; send it again"
                )
            try:
                async for item in call:
                    if isinstance(item, ReplicaTag):
                        _note(item)
                    elif isinstance(item, Failure):
                        raise item.error()
                    else:
                        for delta in item:
                            progress.add(delta)
                            yield delta
                return
            except _SERVE_ERRORS + _REPLICA_LOST as exc:
                if not _replica_lost(exc):
                    raise _mapped(exc) from None
                if progress.complete:
                    return
                attempt += 1
                await self._lost(attempt, exc, "a stream")
            except (GeneratorExit, asyncio.CancelledError):
                call.cancel()  # the client left: free the replica's slot
                raise

    async def embed(self, request: EmbedRequest) -> Embeddings:
        tag, result = await self._call("embeddings", lambda: self._for(request.model).embed.remote(request))
        _note(tag)
        return cast(Embeddings, result)

    async def count_tokens(self, request: InferenceRequest) -> int:
        what = "a token count"
        return int(await self._call(what, lambda: self._for(request.model).count_tokens.remote(request)))

    async def list_models(self) -> list[str]:
        return list(await self._call("the model list", lambda: self.handle.list_models.remote()))

    async def health(self) -> bool:
        try:
            await self.list_models()
        except LLMHostError:
            return False
        return True

    async def aclose(self) -> None:
        return None


class ReplicaHeaderMiddleware:
    """ASGI middleware of the ingress app: names the replica that answered in ``x-llmhost-replica``
    (Serve's replica id; for a call sent again after its replica died, the one that took it over), and
    leaves ``x-request-id`` to Serve's proxy, which sends it itself (the id it gave the request, which
    llmhost's own middleware adopted: without this the client would get it twice)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        notes: list[ReplicaTag] = []
        token = ANSWERED_BY.set(notes)
        proxied = any(name == _REQUEST_ID for name, _ in scope.get("headers", ()))

        async def send_named(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", ())
                    if not (proxied and k.lower() == _REQUEST_ID)
                ]
                if notes:
                    headers.append((REPLICA_HEADER.encode(), notes[-1].replica_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_named)
        finally:
            ANSWERED_BY.reset(token)

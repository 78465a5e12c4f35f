"""The stage protocol: what a pipeline stage may do before, during and after a request.

A stage is one class with up to four hooks; the pipeline calls ``before`` in order, ``on_delta`` for each
streamed delta in order, then ``after`` (or ``on_error``) in reverse order, like middleware. Operations
(calls that run no model: MCP tools) have a hook pair of their own, ``before_operation`` and
``after_operation``; a stage with nothing to say about them keeps the no-op defaults. A stage
refuses a request by raising an :class:`~llmhost.errors.LLMHostError` from ``before`` (``RefusedError``,
``AuthError``, ``RequestError`` ...); each door renders it in its own envelope.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from llmhost.core.types import (
    Delta,
    Embeddings,
    EmbedRequest,
    InferenceRequest,
    Operation,
    OperationResult,
    RequestContext,
    Result,
)

__all__ = ["Answer", "Request", "Stage", "StageBase"]

Request = InferenceRequest | EmbedRequest
Answer = Result | Embeddings


@runtime_checkable
class Stage(Protocol):
    name: str

    async def before(self, ctx: RequestContext, request: Request) -> Request:
        """Check or rewrite the request; raise to refuse it."""
        ...

    def on_delta(self, ctx: RequestContext, delta: Delta) -> Delta:
        """See (or rewrite) each streamed delta; called on the event loop, so keep it cheap."""
        ...

    async def after(self, ctx: RequestContext, answer: Answer) -> Answer:
        """See (or rewrite) the whole answer; for streams, the answer as it was sent."""
        ...

    async def on_error(self, ctx: RequestContext, exc: BaseException) -> None:
        """The request failed (or the client went away) after ``before`` had run."""
        ...

    async def before_operation(self, ctx: RequestContext, op: Operation) -> Operation:
        """Check or rewrite an operation; raise to refuse it."""
        ...

    async def after_operation(
        self, ctx: RequestContext, op: Operation, result: OperationResult
    ) -> OperationResult:
        """See (or rewrite) what an operation gave."""
        ...


class StageBase:
    """No-op hooks, so a stage overrides only what it needs."""

    name = "stage"

    async def before(self, ctx: RequestContext, request: Request) -> Request:
        return request

    def on_delta(self, ctx: RequestContext, delta: Delta) -> Delta:
        return delta

    async def after(self, ctx: RequestContext, answer: Answer) -> Answer:
        return answer

    async def on_error(self, ctx: RequestContext, exc: BaseException) -> None:
        return None

    async def before_operation(self, ctx: RequestContext, op: Operation) -> Operation:
        return op

    async def after_operation(
        self, ctx: RequestContext, op: Operation, result: OperationResult
    ) -> OperationResult:
        return result

"""The one pipeline every door calls: its stages, in order, for whole answers and for streams.

    door (openai · anthropic · ollama · responses · admin · cli) translates its wire format to core types
      -> stages' before(), in order:  audit -> auth -> agents -> validate -> policy -> route -> limits
         -> budget
      -> generate: the gateway calls the route's targets (breakers, retries, fallback, cascade); an
         agent whose tools the server runs loops over it (llmhost.apps.agents.loop)
      -> stages' on_delta(), per streamed delta
      -> stages' after(), in reverse: usage -> budget, limits (settle) -> policy (output) -> agents (the
         run record) -> audit
    door translates the Result / Deltas back to its wire format

Operations (``Pipeline.operate``: MCP tools that run no model) pass the same stages through their
operation hooks: audit, auth (the operation's scope), policy (arguments and output), limits (requests
per minute).

The stage tuple is built in one place (``llmhost.service.Service``); a new stage is one class there.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol, cast

from llmhost.core.stage import Answer, Request, Stage, StageBase
from llmhost.core.stream import ResultBuilder
from llmhost.core.types import (
    Delta,
    Embeddings,
    EmbedRequest,
    InferenceRequest,
    Operation,
    OperationResult,
    RequestContext,
    Result,
    Usage,
)

__all__ = ["Generator", "Pipeline"]


class Generator(Protocol):
    """The "generate" step: the gateway, which answers on the route the "route" stage chose."""

    async def answer(self, ctx: RequestContext, request: InferenceRequest) -> Result: ...

    async def open_stream(self, ctx: RequestContext, request: InferenceRequest) -> AsyncIterator[Delta]:
        """Returns once the stream has produced output (or failed over); the rest follows lazily."""
        ...

    async def embed(self, ctx: RequestContext, request: EmbedRequest) -> Embeddings: ...

    async def count_tokens(self, ctx: RequestContext, request: InferenceRequest) -> int: ...


class Pipeline:
    """Runs requests through ``stages`` around the generator."""

    def __init__(self, generator: Generator, stages: Sequence[Stage]) -> None:
        self.generator = generator
        self.stages = tuple(stages)

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The stages in order, with "generate" after the last one that acts before it."""
        names = [s.name for s in self.stages]
        acting = [i for i, s in enumerate(self.stages) if type(s).before is not StageBase.before]
        split = acting[-1] + 1 if acting else 0
        return (*names[:split], "generate", *names[split:])

    # ----- the four ways in ----------------------------------------------------------------------------
    async def run(self, ctx: RequestContext, request: InferenceRequest) -> Result:
        """A whole answer."""
        request = cast(InferenceRequest, await self._before(ctx, request))
        try:
            result = await self.generator.answer(ctx, request)
        except BaseException as exc:
            await self._on_error(ctx, exc)
            raise
        return cast(Result, await self._after(ctx, result))

    async def stream(self, ctx: RequestContext, request: InferenceRequest) -> AsyncIterator[Delta]:
        """A stream of deltas; returns once the first output is there, so a door can still send an error
        status for anything that fails before it."""
        ctx.stream = True
        request = cast(InferenceRequest, await self._before(ctx, request))
        try:
            deltas = await self.generator.open_stream(ctx, request)
        except BaseException as exc:
            await self._on_error(ctx, exc)
            raise
        return self._flow(ctx, request, deltas)

    async def embed(self, ctx: RequestContext, request: EmbedRequest) -> Embeddings:
        request = cast(EmbedRequest, await self._before(ctx, request))
        try:
            result = await self.generator.embed(ctx, request)
        except BaseException as exc:
            await self._on_error(ctx, exc)
            raise
        return cast(Embeddings, await self._after(ctx, result))

    async def count_tokens(self, ctx: RequestContext, request: InferenceRequest) -> int:
        """Input tokens of a request, through the same stages (no generation, nothing to pay): the
        ``counting`` note tells stages that reserve tokens or money to skip it, and ``after`` sees a
        Result without choices, so whatever ``before`` took is given back."""
        ctx.attrs["counting"] = True
        request = cast(InferenceRequest, await self._before(ctx, request))
        try:
            n = await self.generator.count_tokens(ctx, request)
        except BaseException as exc:
            await self._on_error(ctx, exc)
            raise
        await self._after(ctx, Result(ctx.request_id, request.model, [], Usage(prompt_tokens=n)))
        return n

    async def operate(
        self, ctx: RequestContext, op: Operation, call: Callable[[Operation], Awaitable[OperationResult]]
    ) -> OperationResult:
        """A call that runs no model (an MCP tool): the stages' operation hooks around ``call(op)``,
        with the operation as the stages left it (a policy may have redacted its arguments)."""
        for stage in self.stages:
            try:
                op = await stage.before_operation(ctx, op)
            except BaseException as exc:
                await self._on_error(ctx, exc)
                raise
        try:
            result = await call(op)
        except BaseException as exc:
            await self._on_error(ctx, exc)
            raise
        for stage in reversed(self.stages):
            result = await stage.after_operation(ctx, op, result)
        return result

    # ----- hooks -----------------------------------------------------------------------------------------
    async def _before(self, ctx: RequestContext, request: Request) -> Request:
        for stage in self.stages:
            try:
                request = await stage.before(ctx, request)
            except BaseException as exc:
                await self._on_error(ctx, exc)
                raise
        return request

    async def _after(self, ctx: RequestContext, answer: Answer) -> Answer:
        for stage in reversed(self.stages):
            answer = await stage.after(ctx, answer)
        return answer

    async def _on_error(self, ctx: RequestContext, exc: BaseException) -> None:
        for stage in reversed(self.stages):
            with contextlib.suppress(Exception):
                await stage.on_error(ctx, exc)

    async def _flow(
        self, ctx: RequestContext, request: InferenceRequest, deltas: AsyncIterator[Delta]
    ) -> AsyncIterator[Delta]:
        built = ResultBuilder(ctx.request_id, request.model, logprobs=request.sampling.logprobs is not None)
        failed: BaseException | None = None
        try:
            async for delta in deltas:
                for stage in self.stages:
                    delta = stage.on_delta(ctx, delta)
                built.add(delta)
                yield delta
        except BaseException as exc:  # a broken stream, or the client went away (GeneratorExit)
            failed = exc
            raise
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            if failed is None:
                result = built.result()
                result.target = ctx.target or ""
                await self._after(ctx, result)
            else:
                await self._on_error(ctx, failed)

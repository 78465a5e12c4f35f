"""An agent's tool loop: the pipeline's "generate" step for agents whose tools the server runs.

    step 1: the model answers (tool choice: the agent's, unless the caller chose)
      -> it called server-run tools: run them (each audited), append the results, step again
      -> it answered, or called a tool the caller runs: that is the answer
    the last step (``max_steps``, or past ``max_seconds``) has tool choice "none": it must answer

Requests of other agents, and of plain models, go straight to the gateway. A stream forwards each
step's text as it comes; the tool calls the server runs, and the steps' own finish and usage events,
stay inside; the last event carries the usage of all steps together.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from llmhost.apps.agents.spec import AgentSpec
from llmhost.apps.agents.toolbox import ServerTool, Toolbox
from llmhost.core.pipeline import Generator
from llmhost.core.types import (
    ChatMessage,
    Delta,
    Embeddings,
    EmbedRequest,
    InferenceRequest,
    RequestContext,
    Result,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)

__all__ = ["TRACE_KEY", "AgentGenerator", "RunTrace"]

TRACE_KEY = "agent.run"


@dataclass(slots=True)
class RunTrace:
    """What one request's run did, noted by the "agents" stage and the loop, recorded afterwards."""

    agent: AgentSpec | None
    model: str
    server_tools: dict[str, ServerTool] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    citations: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def loops(self) -> bool:
        return bool(self.agent is not None and self.server_tools)


class AgentGenerator:
    """Wraps the gateway: agents with server-run tools loop; everything else passes through."""

    def __init__(self, inner: Generator, toolbox: Toolbox) -> None:
        self.inner = inner
        self.toolbox = toolbox

    async def embed(self, ctx: RequestContext, request: EmbedRequest) -> Embeddings:
        return await self.inner.embed(ctx, request)

    async def count_tokens(self, ctx: RequestContext, request: InferenceRequest) -> int:
        return await self.inner.count_tokens(ctx, request)

    # ----- whole answers -----------------------------------------------------------------------------
    async def answer(self, ctx: RequestContext, request: InferenceRequest) -> Result:
        trace: RunTrace | None = ctx.attrs.get(TRACE_KEY)
        if trace is None or not trace.loops:
            return await self.inner.answer(ctx, request)
        assert trace.agent is not None
        messages, total, step = list(request.messages), Usage(), 0
        while True:
            req = dataclasses.replace(
                request, messages=tuple(messages), tool_choice=self._choice(trace, request, step)
            )
            result = await self.inner.answer(ctx, req)
            total += result.usage
            choice = result.choices[0]
            calls = choice.tool_calls
            trace.steps.append(_step(step, choice.text, calls, result.usage, choice.finish_reason))
            if not self._runs_all(trace, calls):
                result.usage = total
                return result
            await self._run_calls(ctx, trace, messages, choice.text, calls)
            step += 1

    # ----- streams -----------------------------------------------------------------------------------
    async def open_stream(self, ctx: RequestContext, request: InferenceRequest) -> AsyncIterator[Delta]:
        trace: RunTrace | None = ctx.attrs.get(TRACE_KEY)
        if trace is None or not trace.loops:
            return await self.inner.open_stream(ctx, request)
        first = await self.inner.open_stream(
            ctx, self._step_request(trace, request, list(request.messages), 0)
        )
        return self._stream(ctx, trace, request, first)

    async def _stream(
        self, ctx: RequestContext, trace: RunTrace, request: InferenceRequest, deltas: AsyncIterator[Delta]
    ) -> AsyncIterator[Delta]:
        messages, total, step = list(request.messages), Usage(), 0
        while True:
            text: list[str] = []
            calls: dict[int, list[Any]] = {}  # index -> [id, name, arguments]
            finish: Delta | None = None
            usage = Usage()
            async for d in deltas:
                if d.index < 0:
                    usage = d.usage or usage
                    continue
                if d.finish_reason is not None:
                    finish = d
                for c in d.tool_calls:
                    slot = calls.setdefault(c.index, [c.id or "", c.name or "", ""])
                    slot[2] += c.arguments
                if d.text or d.logprobs:  # the text goes out as it comes
                    text.append(d.text)
                    yield Delta(index=0, text=d.text, logprobs=d.logprobs)
            total += usage
            made = tuple(ToolCall(i, n, a) for i, n, a in (calls[k] for k in sorted(calls)))
            reason = finish.finish_reason if finish is not None else None
            trace.steps.append(_step(step, "".join(text), made, usage, reason))
            if not self._runs_all(trace, made):
                if made:
                    yield Delta(index=0, tool_calls=_call_deltas(made))
                yield Delta(
                    index=0, finish_reason=reason, stop_sequence=finish.stop_sequence if finish else None
                )
                yield Delta(index=-1, usage=total)
                return
            await self._run_calls(ctx, trace, messages, "".join(text), made)
            step += 1
            deltas = await self.inner.open_stream(ctx, self._step_request(trace, request, messages, step))

    # ----- the loop's parts --------------------------------------------------------------------------
    def _choice(self, trace: RunTrace, request: InferenceRequest, step: int) -> ToolChoice:
        agent = trace.agent
        assert agent is not None
        elapsed = time.monotonic() - trace.started
        if step >= agent.max_steps - 1 or elapsed >= agent.max_seconds:
            return ToolChoice("none")
        if step > 0:  # a forced first call ("required", a named tool) is not forced again
            return ToolChoice("auto") if request.tool_choice.mode != "none" else request.tool_choice
        return request.tool_choice

    def _step_request(
        self, trace: RunTrace, request: InferenceRequest, messages: list[ChatMessage], step: int
    ) -> InferenceRequest:
        return dataclasses.replace(
            request, messages=tuple(messages), tool_choice=self._choice(trace, request, step)
        )

    @staticmethod
    def _runs_all(trace: RunTrace, calls: tuple[ToolCall, ...] | list[ToolCall]) -> bool:
        """Whether every call is one the server runs (a call to a caller's tool ends the loop)."""
        return bool(calls) and all(c.name in trace.server_tools for c in calls)

    async def _run_calls(
        self,
        ctx: RequestContext,
        trace: RunTrace,
        messages: list[ChatMessage],
        text: str,
        calls: tuple[ToolCall, ...] | list[ToolCall],
    ) -> None:
        agent = trace.agent
        assert agent is not None
        messages.append(ChatMessage("assistant", text, tool_calls=tuple(calls)))
        for call in calls:
            left = agent.max_seconds - (time.monotonic() - trace.started)
            started = time.perf_counter()
            outcome = await self.toolbox.call(ctx, agent, trace.server_tools[call.name], call.arguments, left)
            trace.tool_calls.append(
                {
                    "name": call.name,
                    "arguments": call.arguments,
                    "ok": outcome.ok,
                    "error": outcome.error,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                }
            )
            content = outcome.output if outcome.ok else f"error: {outcome.error}"
            messages.append(ChatMessage("tool", content, tool_call_id=call.id, name=call.name))


def _step(
    n: int, text: str, calls: tuple[ToolCall, ...] | list[ToolCall], usage: Usage, finish: str | None
) -> dict[str, Any]:
    return {
        "step": n,
        "text_chars": len(text),
        "tool_calls": [c.name for c in calls],
        "finish_reason": finish,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
    }


def _call_deltas(calls: tuple[ToolCall, ...]) -> tuple[ToolCallDelta, ...]:
    return tuple(ToolCallDelta(i, c.id, c.name, c.arguments) for i, c in enumerate(calls))

"""The pipeline's "agents" stage: a model name that names an agent becomes that agent's request, and
every inference request leaves a run record (the scorecards' data).

    before (after "auth", before "validate" and "policy", so both see what the agent adds):
      the agent's key scope -> its policy on the principal -> retrieval from its datasets (the question
      is the last user message; the chunks go into the system prompt, numbered, and come back as
      citations) -> its system prompt, sampling defaults and tools -> the request names its model
    generate: llmhost.apps.agents.loop (the tool loop, when the server runs the agent's tools)
    after / on_error: one RunRecord (steps, tool calls, retrieved chunks, tokens, cost, latency, policy)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Protocol

from llmhost.apps.agents.loop import TRACE_KEY, RunTrace
from llmhost.apps.agents.registry import Agents
from llmhost.apps.agents.spec import AgentSpec
from llmhost.apps.agents.store import RunRecord
from llmhost.core.stage import Answer, Request, StageBase
from llmhost.core.types import ChatMessage, InferenceRequest, RequestContext, Result, ToolChoice, new_id
from llmhost.errors import RefusedError, RequestError, classify

__all__ = ["CITATIONS_KEY", "RUN_HEADER", "AgentStage", "Retriever"]

CITATIONS_KEY = "agent.citations"
RUN_HEADER = "x-llmhost-run-id"
_CONTEXT_INTRO = (
    "Answer from the numbered sources below when they hold the answer, and cite each source you use "
    "as [n]. If they do not hold it, say so.\n\nSources:\n"
)


class Retriever(Protocol):
    """The datasets' hybrid search (``llmhost.apps.datasets.Datasets``)."""

    async def search(
        self, ctx: RequestContext, names: Sequence[str], query: str, k: int = 5
    ) -> Sequence[Any]: ...

    def exists(self, name: str) -> bool: ...


class AgentStage(StageBase):
    name = "agents"

    def __init__(self, agents: Agents, retriever: Retriever | None = None) -> None:
        self.agents = agents
        self.retriever = retriever

    async def before(self, ctx: RequestContext, request: Request) -> Request:
        if not isinstance(request, InferenceRequest):
            return request
        found = self.agents.find(request.model)
        if ctx.attrs.get("counting"):  # count the tokens the agent's request would have; no run
            return await self._as_agent(ctx, request, found, count_only=True) if found else request
        ctx.response_headers[RUN_HEADER] = ctx.request_id
        if found is None:
            ctx.attrs[TRACE_KEY] = RunTrace(agent=None, model=request.model)
            return request
        return await self._as_agent(ctx, request, found)

    async def _as_agent(
        self, ctx: RequestContext, request: InferenceRequest, agent: AgentSpec, *, count_only: bool = False
    ) -> InferenceRequest:
        if agent.scope is not None and not ctx.principal.may(agent.scope):
            raise RefusedError(
                f"this API key lacks the {agent.scope!r} scope agent {agent.name!r} needs",
                "insufficient_scope",
            )
        if agent.policy is not None:
            ctx.principal = dataclasses.replace(ctx.principal, policy=agent.policy)
        trace = RunTrace(agent=agent, model=agent.model)
        if not count_only:
            ctx.attrs[TRACE_KEY] = trace
        if request.kind != "chat":
            # A plain completion (a raw prompt, Ollama's raw or template generate) has no turns to put a
            # system prompt, documents or tools in: it runs on the agent's model with its sampling
            # defaults and policy, as Ollama runs a raw prompt on a model made FROM another.
            return dataclasses.replace(
                request, model=agent.model, sampling=agent.sampling.fill(request.sampling)
            )
        system = agent.system
        if agent.datasets and self.retriever is not None:
            context = await self._retrieve(ctx, agent, request, trace)
            if context:
                system = f"{system}\n\n{context}" if system else context
        messages = request.messages
        if system and messages and messages[0].role == "system":
            # The caller's own system prompt joins the agent's in one system turn: most chat templates
            # take a single one, first (Gemma's refuses a second).
            first = messages[0]
            messages = (dataclasses.replace(first, content=f"{system}\n\n{first.content}"), *messages[1:])
        elif system:
            messages = (ChatMessage("system", system), *messages)
        server_tools = await self.agents.toolbox.tools_for(agent, ctx.principal) if agent.server_tools else []
        trace.server_tools = {t.tool.name: t for t in server_tools}
        caller = {t.name for t in request.tools}
        clash = caller & ({t.function.name for t in agent.tools} | set(trace.server_tools))
        if clash:
            raise RequestError(
                f"tool {sorted(clash)[0]!r} is one of agent {agent.name!r}'s own", param="tools"
            )
        tools = (*request.tools, *(t.tool() for t in agent.tools), *(t.tool for t in server_tools))
        # A caller that sent no tools chose nothing (the dialects say "none" then): the agent's applies.
        choice = request.tool_choice if request.tools else ToolChoice("auto")
        if choice.mode == "auto" and tools and agent.tool_choice != "auto":
            mode = "required" if agent.tool_choice == "required" else "tool"
            name = None if mode == "required" else agent.tool_choice
            if name is not None and name not in {t.name for t in tools}:
                raise RequestError(f"agent {agent.name!r} names tool {name!r} first, which it does not have")
            choice = ToolChoice(mode, name)  # type: ignore[arg-type]
        if trace.loops and request.sampling.n != 1:
            raise RequestError("an agent that runs tools answers one choice (n = 1)", param="n")
        return dataclasses.replace(
            request,
            model=agent.model,
            messages=messages,
            sampling=agent.sampling.fill(request.sampling),
            tools=tools,
            tool_choice=choice,
        )

    async def _retrieve(
        self, ctx: RequestContext, agent: AgentSpec, request: InferenceRequest, trace: RunTrace
    ) -> str:
        question = next((m.content for m in reversed(request.messages) if m.role == "user" and m.content), "")
        if not question or self.retriever is None:
            return ""
        names = [n for n in agent.datasets if self.retriever.exists(n)]  # one removed since: skipped
        if not names:
            return ""
        child = RequestContext(principal=ctx.principal, door=ctx.door, request_id=new_id("retrieve"))
        hits = await self.retriever.search(child, names, question, agent.retrieval_k)
        lines = []
        for n, hit in enumerate(hits, start=1):
            cite = {
                "index": n,
                "dataset": hit.dataset,
                "document": hit.document,
                "chunk": hit.chunk,
                "start": hit.start,
                "end": hit.end,
                "text": hit.text,
            }
            trace.citations.append(cite)
            trace.retrieved.append(
                {"dataset": hit.dataset, "document": hit.document, "chunk": hit.chunk, "score": hit.score}
            )
            lines.append(f"[{n}] ({hit.document})\n{hit.text.strip()}")
        ctx.attrs[CITATIONS_KEY] = trace.citations
        return _CONTEXT_INTRO + "\n\n".join(lines) if lines else ""

    # ----- the run record ----------------------------------------------------------------------------
    async def after(self, ctx: RequestContext, answer: Answer) -> Answer:
        trace: RunTrace | None = ctx.attrs.get(TRACE_KEY)
        if trace is None or not isinstance(answer, Result):
            return answer
        if trace.agent is not None:
            answer.model = trace.agent.name  # the name the client asked for
        if trace.citations:
            answer.citations = trace.citations
        self._record(ctx, trace, "ok", "", answer)
        return answer

    async def on_error(self, ctx: RequestContext, exc: BaseException) -> None:
        trace: RunTrace | None = ctx.attrs.get(TRACE_KEY)
        if trace is None:
            return
        info = classify(exc) if isinstance(exc, Exception) else None
        kind = info.kind if info is not None else "cancelled"
        self._record(ctx, trace, kind, info.message if info is not None else "the client went away", None)

    def _record(
        self, ctx: RequestContext, trace: RunTrace, status: str, error: str, result: Result | None
    ) -> None:
        prompt = sum(a.usage.prompt_tokens for a in ctx.attempts)
        completion = sum(a.usage.completion_tokens for a in ctx.attempts)
        if result is not None and not ctx.attempts:
            prompt, completion = result.usage.prompt_tokens, result.usage.completion_tokens
        self.agents.store.record(
            RunRecord(
                id=ctx.request_id,
                agent=trace.agent.name if trace.agent is not None else "",
                model=trace.model,
                door=ctx.door,
                principal=ctx.principal.name,
                key_id=ctx.principal.key_id or "",
                created=time.time(),
                status=status,
                error=error[:500],
                latency_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost=sum(a.cost for a in ctx.attempts),
                stream=ctx.stream,
                steps=trace.steps,
                tool_calls=trace.tool_calls or _caller_calls(result),
                retrieved=trace.retrieved,
                policy=list(ctx.attrs.get("policy.decisions", [])),
            )
        )


def _caller_calls(result: Result | None) -> list[dict[str, Any]]:
    """Tool calls the answer hands to the caller (they count as made; whether they worked, the caller
    knows)."""
    if result is None:
        return []
    return [
        {"name": c.name, "arguments": c.arguments, "ok": True, "error": "", "latency_ms": 0.0, "caller": True}
        for choice in result.choices
        for c in choice.tool_calls
    ]

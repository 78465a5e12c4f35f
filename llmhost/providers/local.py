"""The local provider: llmhost's own engine behind the :class:`Provider` protocol.

It turns typed requests into engine requests (chat template, sampling parameters with the model's
configured defaults, speculative decoding as the request or else the model's settings ask, a grammar
for ``response_format``, ``n`` parallel sequences) and engine outputs into :class:`Delta` objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llmhost.config import ModelSettings
from llmhost.core.stream import ResultBuilder
from llmhost.core.types import (
    Delta,
    Embeddings,
    EmbedRequest,
    FinishReason,
    InferenceRequest,
    ResponseFormat,
    Result,
    Sampling,
    Usage,
)
from llmhost.engine.types import FinishReason as EngineFinish
from llmhost.engine.types import RequestOutput, SamplingParams
from llmhost.errors import EngineError, LLMHostError, RequestError
from llmhost.local.backend import ChatPlan, Generation, LocalBackend
from llmhost.models.manager import LoadedModel
from llmhost.toolcalls import (
    ToolCallParser,
    ToolSyntax,
    detect_syntax,
    json_schema_grammar,
    permitted_tools,
    to_template_messages,
    to_template_tools,
    tool_grammar,
    validate_tools,
)

__all__ = ["LocalProvider", "engine_sampling", "grammar_for"]


def grammar_for(response_format: ResponseFormat) -> str | None:
    """GBNF for a JSON ``response_format``, or None for text."""
    if response_format.type == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF

    if response_format.type == "json":
        return str(JSON_GBNF)
    if not isinstance(response_format.schema, dict):
        raise RequestError("response_format.json_schema.schema is required", param="response_format")
    try:
        return json_schema_grammar(response_format.schema)
    except Exception as exc:
        raise RequestError(f"unsupported JSON schema: {exc}", param="response_format") from exc


def _pick(value: float | None, default: float | None, fallback: float) -> float:
    return value if value is not None else default if default is not None else fallback


def engine_sampling(
    s: Sampling,
    model_settings: ModelSettings,
    *,
    grammar: str | None = None,
    seed_offset: int = 0,
    lazy_triggers: tuple[str, ...] | None = None,
) -> SamplingParams:
    """Request sampling -> engine sampling; the model's settings fill the fields the request leaves unset,
    ``speculative`` included (a request's ``"none"`` turns off what the model turns on)."""
    speculative = (s.speculative or model_settings.speculative) == "ngram"
    return SamplingParams(
        max_tokens=s.max_tokens,
        temperature=_pick(s.temperature, model_settings.temperature, 1.0),
        top_p=_pick(s.top_p, model_settings.top_p, 1.0),
        top_k=int(_pick(s.top_k, model_settings.top_k, 0)),
        min_p=_pick(s.min_p, model_settings.min_p, 0.0),
        seed=None if s.seed is None else s.seed + seed_offset,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repeat_penalty=_pick(s.repeat_penalty, model_settings.repeat_penalty, 1.0),
        logit_bias=dict(s.logit_bias),
        stop=s.stop,
        grammar=grammar,
        grammar_lazy=lazy_triggers is not None,
        grammar_triggers=lazy_triggers or (),
        ignore_eos=s.ignore_eos,
        logprobs=s.logprobs,
        speculative="ngram" if speculative else None,
        draft_max=model_settings.resolved_draft_max,
    )


def _finish(out: RequestOutput) -> FinishReason | None:
    if out.finish_reason is None:
        return None
    return "length" if out.finish_reason is EngineFinish.LENGTH else "stop"


def _raise_output_error(out: RequestOutput) -> None:
    if out.error is not None:
        raise out.error if isinstance(out.error, LLMHostError) else EngineError(str(out.error))


def _uses_tools(request: InferenceRequest) -> bool:
    return bool(request.tools) and request.tool_choice.mode != "none"


def _plan(request: InferenceRequest, model_settings: ModelSettings, syntax: ToolSyntax | None) -> ChatPlan:
    """Template input and sampling for ``request``: a tool grammar (forced for
    ``required`` / a named tool, lazy for ``auto``) unless the request asked for a JSON format."""
    defaults_grammar = grammar_for(request.response_format)
    tools = to_template_tools(request.tools) if _uses_tools(request) else None
    grammar, triggers = defaults_grammar, None
    if syntax is not None and _uses_tools(request):
        tg = tool_grammar(request.tools, request.tool_choice, request.parallel_tool_calls, syntax)
        forced = request.tool_choice.mode in ("required", "tool")
        if tg is not None and (forced or defaults_grammar is None):
            grammar, triggers = tg.grammar, (tg.triggers if tg.lazy else None)
    params = [
        engine_sampling(
            request.sampling, model_settings, grammar=grammar, seed_offset=i, lazy_triggers=triggers
        )
        for i in range(request.sampling.n)
    ]
    return ChatPlan(to_template_messages(request.messages, syntax=syntax), tools, params)


class _Choice:
    """One choice's tool-call parser (when the request has tools) and whether it already ended.

    ``forced``: the grammar makes every byte of the output call syntax (``required`` / a named tool), so
    any text the parser gives back is the markup of a call cut off before its name was complete
    (``max_tokens``), never content for the client.
    """

    def __init__(self, parser: ToolCallParser | None, forced: bool = False) -> None:
        self.parser = parser
        self.forced = forced
        self.called = False
        self.ended = False

    def text(self, i: int, text: str, logprobs: tuple[Any, ...]) -> list[Delta]:
        if self.parser is None:
            return [Delta(i, text, logprobs=logprobs)] if text or logprobs else []
        return self._events(i, self.parser.feed(text), logprobs)

    def finish(self, i: int) -> list[Delta]:
        return self._events(i, self.parser.finish(), ()) if self.parser is not None else []

    def _events(self, i: int, events: list[str | Any], logprobs: tuple[Any, ...]) -> list[Delta]:
        deltas: list[Delta] = []
        for event in events:
            if isinstance(event, str):
                if not self.forced:
                    deltas.append(Delta(i, event))
            else:
                self.called = True
                deltas.append(Delta(i, tool_calls=(event,)))
        if logprobs:
            deltas.append(Delta(i, logprobs=logprobs))
        return deltas


class LocalProvider:
    """The in-process engine as a provider."""

    def __init__(self, backend: LocalBackend, name: str = "local") -> None:
        self.backend = backend
        self.name = name

    async def _start(self, request: InferenceRequest) -> tuple[list[Generation], ToolSyntax | None]:
        """Accept the request on the engine: one generation per choice (``n``)."""
        model_settings = self.backend.model_settings(request.model)
        if request.kind == "completion":
            grammar = grammar_for(request.response_format)
            n = request.sampling.n
            params = [
                engine_sampling(request.sampling, model_settings, grammar=grammar, seed_offset=i)
                for i in range(n)
            ]
            prompt = request.prompt if isinstance(request.prompt, str) else list(request.prompt)
            gens = await self.backend.complete(
                request.model,
                prompt,
                params,
                request.cache_scope,
                request.prefix_tokens,
                request.sampling.prediction,
            )
            return gens, None
        if request.tools:
            validate_tools(request.tools, request.tool_choice)
        syntax: ToolSyntax | None = None

        def plan(model: LoadedModel) -> ChatPlan:
            nonlocal syntax
            if _uses_tools(request):
                syntax = detect_syntax(model.template.source, model.record.architecture, model.name)
            return _plan(request, model_settings, syntax)

        gens = await self.backend.chat(
            request.model, plan, request.cache_scope, request.prefix_tokens, request.sampling.prediction
        )
        return gens, syntax

    async def answer(self, request: InferenceRequest) -> Result:
        gens, syntax = await self._start(request)
        built = ResultBuilder(
            gens[0].request_id, request.model, logprobs=request.sampling.logprobs is not None
        )
        async for delta in self._deltas(request, gens, syntax):
            built.add(delta)
        return built.result()

    async def stream(self, request: InferenceRequest) -> AsyncIterator[Delta]:
        gens, syntax = await self._start(request)
        async for delta in self._deltas(request, gens, syntax):
            yield delta

    async def _deltas(
        self, request: InferenceRequest, gens: list[Generation], syntax: ToolSyntax | None
    ) -> AsyncIterator[Delta]:
        echo = request.prompt if request.echo and isinstance(request.prompt, str) else ""
        client_stops = set(request.sampling.stop)
        allowed = permitted_tools(request.tools, request.tool_choice) if syntax is not None else []
        forced = request.tool_choice.mode in ("required", "tool")
        choices = [
            _Choice(ToolCallParser(syntax, allowed, parallel=request.parallel_tool_calls), forced)
            if syntax is not None
            else _Choice(None)
            for _ in gens
        ]
        answers: list[list[int]] | None = [[] for _ in gens] if request.want_tokens else None
        try:
            if len(gens) == 1:
                outputs: AsyncIterator[tuple[int, RequestOutput]] = _indexed(gens[0])
            else:
                outputs = _merged(gens)
            usage = [Usage() for _ in gens]
            prompt_told = False
            if echo:
                for i in range(len(gens)):
                    yield Delta(i, echo)
            async for i, out in outputs:
                _raise_output_error(out)
                if not prompt_told:  # the prompt is read: its size goes out before the answer's first text
                    prompt_told = True
                    yield Delta(i, usage=Usage(out.prompt_tokens, 0, out.cached_tokens))
                choice = choices[i]
                if choice.ended:
                    continue
                if answers is not None:
                    answers[i] += out.token_ids
                for delta in choice.text(i, out.text, out.logprobs):
                    yield delta
                finish = _finish(out)
                parser_done = choice.parser is not None and choice.parser.done
                if finish is None and not parser_done:
                    continue
                if parser_done:
                    gens[i].stream.cancel()  # one call read, parallel calls off: nothing more can change it
                for delta in choice.finish(i):
                    yield delta
                choice.ended = True
                stop = out.stop_sequence if out.stop_sequence in client_stops else None
                # A call cut off by max_tokens still says "length", as OpenAI's does.
                reason: FinishReason = finish or "stop"
                if choice.called and finish != "length":
                    reason = "tool_calls"
                tokens = None if answers is None else (*gens[i].prompt_ids, *answers[i])
                yield Delta(
                    i, finish_reason=reason, stop_sequence=None if choice.called else stop, tokens=tokens
                )
                usage[i] = Usage(out.prompt_tokens, out.completion_tokens, out.cached_tokens)
                if all(c.ended for c in choices):
                    break
            total = Usage(
                usage[0].prompt_tokens, sum(u.completion_tokens for u in usage), usage[0].cached_tokens
            )
            yield Delta(-1, usage=total)
        finally:
            for gen in gens:
                gen.stream.cancel()  # the consumer left early (client gone): free the slots

    async def embed(self, request: EmbedRequest) -> Embeddings:
        inputs: list[str | list[int]] = [x if isinstance(x, str) else list(x) for x in request.inputs]
        vectors, n_tokens = await self.backend.embed(request.model, inputs, truncate=request.truncate)
        return Embeddings(vectors, Usage(prompt_tokens=n_tokens), model=request.model)

    async def count_tokens(self, request: InferenceRequest) -> int:
        if request.kind == "chat":
            model_settings = self.backend.model_settings(request.model)
            if request.tools:
                validate_tools(request.tools, request.tool_choice)

            def plan(model: LoadedModel) -> ChatPlan:
                syntax = None
                if _uses_tools(request):
                    syntax = detect_syntax(model.template.source, model.record.architecture, model.name)
                return _plan(request, model_settings, syntax)

            return await self.backend.count_chat_tokens(request.model, plan)
        if isinstance(request.prompt, str):
            return await self.backend.count_text_tokens(request.model, request.prompt)
        return len(request.prompt)

    async def list_models(self) -> list[str]:
        return [r.name for r in self.backend.list_models()]

    async def health(self) -> bool:
        return self.backend.ready

    async def aclose(self) -> None:
        return None


async def _indexed(gen: Generation) -> AsyncIterator[tuple[int, RequestOutput]]:
    async for out in gen.stream:
        yield 0, out


async def _merged(gens: Sequence[Generation]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several generations as they arrive (``n`` > 1 decodes the choices side by side)."""
    queue: asyncio.Queue[tuple[int, RequestOutput | None]] = asyncio.Queue()

    async def pump(i: int, gen: Generation) -> None:
        try:
            async for out in gen.stream:
                queue.put_nowait((i, out))
        finally:
            queue.put_nowait((i, None))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        live = len(tasks)
        while live:
            i, out = await queue.get()
            if out is None:
                live -= 1
                continue
            yield i, out
    finally:
        for task in tasks:
            task.cancel()

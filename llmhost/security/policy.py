"""The governance policy: the pipeline's "policy" stage redacts PII and secrets, refuses blocked text and
caps sizes, on input and on output, for every door alike (the CLI too: it is a stage of the one pipeline).

    before()    input: size cap (400 policy_input_too_large) -> blocked patterns (403 policy_blocked)
                -> redaction: the route, the model or upstream, usage and audit see the redacted request
    on_delta()  streamed output: each choice's text passes a holdback that sends all but the tail that
                may still grow into a match (the trailing word or number, at most HOLDBACK characters);
                the tail goes out once it cannot (a space, punctuation), or with the choice's finish
    after()     whole answers: each choice's text and tool-call arguments

A match becomes ``[REDACTED:rule]`` (a blocked pattern in an answer: ``[BLOCKED]``). Tool-call arguments
are JSON: their strings are redacted and the JSON stays valid; in a stream, a call's arguments are held
until the call is complete and then sent in one piece. Log-probabilities of redacted text are dropped,
since their tokens would spell what was redacted. An answer longer than ``max_output_chars`` is cut
there and ends with finish reason ``length`` (generation is bounded to 4 tokens per allowed character,
so a capped request does not run on to its ``max_tokens``).

Which policy applies: the key's own (``llmhost keys create --policy NAME``: ``[policies.NAME]``), else
the default ``[policy]``. Each decision is an entry ``{"direction", "rule", "action", "count"}`` in
``ctx.attrs["policy.decisions"]``, which the audit stage writes into the request's record, and is counted
in :attr:`PolicyStage.counts`, which the metrics endpoint exports.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llmhost.config import PolicySettings, Settings
from llmhost.core.stage import Answer, Request, StageBase
from llmhost.core.types import (
    Delta,
    EmbedRequest,
    InferenceRequest,
    Operation,
    OperationResult,
    Principal,
    RequestContext,
    Result,
    TokenLogprob,
    ToolCallDelta,
)
from llmhost.errors import RefusedError, RequestError
from llmhost.security.limits import with_max_tokens
from llmhost.security.policy_patterns import (
    DETECTORS,
    GROUPS,
    Detector,
    Hit,
    candidate_start,
    find_hits,
    logprobs_kept,
    may_match,
    original_offset,
    redact_json,
    redact_text,
    render,
)

__all__ = ["HOLDBACK", "Policy", "PolicyStage", "TextHoldback", "redact_json", "redact_text"]

log = logging.getLogger(__name__)

HOLDBACK = 64  # most characters a stream holds back while a match may still be in progress
# Characters already sent that the patterns still see: for their look-behind checks, and so a blocked
# phrase whose first words went out before its last one came is still cut short.
_CONTEXT = HOLDBACK
_BIG_INPUT = 64 * 1024  # characters of input from which the checks run on a worker thread
_TOKENS_PER_CHAR = 4  # a character is at most 4 UTF-8 bytes, and a token makes at least one byte

Decision = tuple[str, str, str]  # (direction, rule, action)


@dataclass(frozen=True, slots=True)
class Policy:
    """One policy, compiled from its settings: the detectors it redacts with, its blocked patterns
    (detectors whose rule is ``block[i]``), its caps, and where ``redact``/``block`` apply."""

    name: str = "default"
    redact: tuple[Detector, ...] = ()
    block: tuple[Detector, ...] = ()
    max_input_chars: int | None = None
    max_output_chars: int | None = None
    on_input: bool = True
    on_output: bool = True

    @classmethod
    def from_settings(cls, name: str, settings: PolicySettings) -> Policy:
        rules: set[str] = set()
        for rule in settings.redact:
            rules.update(GROUPS.get(rule, (rule,)))
        return cls(
            name=name,
            redact=tuple(d for d in DETECTORS if d.rule in rules),
            block=tuple(
                Detector(f"block[{i}]", re.compile(p), label="[BLOCKED]")
                for i, p in enumerate(settings.block)
            ),
            max_input_chars=settings.max_input_chars,
            max_output_chars=settings.max_output_chars,
            on_input=settings.apply_to in ("input", "both"),
            on_output=settings.apply_to in ("output", "both"),
        )

    @property
    def active(self) -> bool:
        return bool(self.redact or self.block) or bool(self.max_input_chars or self.max_output_chars)

    @property
    def input_detectors(self) -> tuple[Detector, ...]:
        """Blocked patterns first: on a tie between two matches, the one to refuse wins."""
        return (*self.block, *self.redact) if self.on_input else ()

    @property
    def output_detectors(self) -> tuple[Detector, ...]:
        return (*self.block, *self.redact) if self.on_output else ()

    @property
    def watches_output(self) -> bool:
        return bool(self.output_detectors) or self.max_output_chars is not None


def _action(rule: str) -> str:
    return "block" if rule.startswith("block[") else "redact"


# ----- redacting streams -----------------------------------------------------------------------------
class TextHoldback:
    """One streamed text through the detectors: :meth:`feed` returns what can be sent now, holding back
    only the tail that may still grow into a match.

    A match that began in text already sent (a blocked phrase whose first words went out before its
    last one came) has the rest of it replaced. A tail longer than ``holdback`` characters is let go
    from its start, unless a match of an open-ended
    secret (a key, a token) runs to the end: then its marker goes out and the characters that extend
    it are swallowed as they come, so a long token never leaks in pieces. Log-probabilities travel with
    the text of the delta they came with and are dropped where that text was redacted.
    """

    def __init__(self, detectors: Sequence[Detector], holdback: int = HOLDBACK) -> None:
        self.detectors = tuple(detectors)
        self.holdback = holdback
        self.pending = ""
        self._context = ""
        self._spans: list[tuple[int, int, tuple[TokenLogprob, ...]]] = []  # (start, end) in pending
        self._swallow: re.Pattern[str] | None = None

    def push(self, text: str, logprobs: Sequence[TokenLogprob] = ()) -> None:
        """Take text without sending anything yet."""
        if self._swallow is not None and text:
            m = self._swallow.match(text)
            eaten = m.end() if m is not None else 0
            if eaten:
                text, logprobs = text[eaten:], ()
            if text:
                self._swallow = None
        start = len(self.pending)
        self.pending += text
        if logprobs:
            self._spans.append((start, len(self.pending), tuple(logprobs)))

    def feed(
        self, text: str, logprobs: Sequence[TokenLogprob] = (), *, final: bool = False
    ) -> tuple[str, tuple[TokenLogprob, ...], list[Hit]]:
        """Take text; return what may be sent (redacted), its log-probabilities, and the matches in it.
        ``final``: nothing more follows this run of text (a finish, a tool call): send it all."""
        self.push(text, logprobs)
        return self.release(final=final)

    def release(self, *, final: bool = False) -> tuple[str, tuple[TokenLogprob, ...], list[Hit]]:
        buf = self._context + self.pending
        base = len(self._context)
        hits = [
            h if h.start >= base else Hit(base, h.end, h.detector)
            for h in find_hits(self.detectors, buf)
            if h.end > base
        ]
        if final:
            cut = len(buf)
            self._swallow = None
        else:
            cut = candidate_start(buf, base, self.holdback + 1)
            if len(buf) - cut > self.holdback:
                last = hits[-1] if hits else None
                if last is not None and last.end == len(buf) and last.detector.grows is not None:
                    cut, self._swallow = len(buf), last.detector.grows
                else:
                    cut = len(buf) - self.holdback
            for hit in hits:
                if hit.start < cut < hit.end:
                    cut = hit.start
                    break
        sent = [h for h in hits if h.end <= cut]
        out = render(buf, base, cut, sent)
        logprobs = self._release_logprobs(cut - base, [(h.start - base, h.end - base) for h in sent])
        self._context = buf[:cut][-_CONTEXT:]
        self.pending = buf[cut:]
        return out, logprobs, sent

    def _release_logprobs(self, n: int, redacted: list[tuple[int, int]]) -> tuple[TokenLogprob, ...]:
        out: list[TokenLogprob] = []
        kept: list[tuple[int, int, tuple[TokenLogprob, ...]]] = []
        for start, end, items in self._spans:
            if end > n:
                kept.append((start - n, end - n, items))
            elif not any(s < end and start < e for s, e in redacted):
                out.extend(items)
        self._spans = kept
        return tuple(out)


@dataclass
class _ChoiceState:
    text: TextHoldback | None
    calls: dict[int, list[str]] = field(default_factory=dict)  # open tool calls' held argument pieces
    sent: int = 0  # characters of text sent
    done: bool = False  # cut at max_output_chars: the rest of the choice is dropped


class _StreamState:
    """The policy's view of one stream: a holdback per choice and the tool calls still open."""

    def __init__(self, stage: PolicyStage, ctx: RequestContext, policy: Policy) -> None:
        self.stage, self.ctx, self.policy = stage, ctx, policy
        self.detectors = policy.output_detectors
        self.choices: dict[int, _ChoiceState] = {}

    def feed(self, delta: Delta) -> Delta:
        if delta.index < 0:
            return delta
        c = self.choices.get(delta.index)
        if c is None:
            c = self.choices[delta.index] = _ChoiceState(
                TextHoldback(self.detectors) if self.detectors else None
            )
        if c.done:
            return replace(
                delta,
                text="",
                logprobs=(),
                tool_calls=(),
                finish_reason=None,
                stop_sequence=None,
                tokens=None,
            )
        finish, stop = delta.finish_reason, delta.stop_sequence
        text, logprobs = delta.text, delta.logprobs
        calls: list[ToolCallDelta] = []
        hits: list[Hit] = []
        if c.text is not None:
            if delta.text and c.calls:
                # Text after a tool call: the calls are complete. They go out first; the text waits for
                # the next delta (doors render a delta's text before its calls).
                calls += self._close_calls(c)
                c.text.push(delta.text, delta.logprobs)
                text, logprobs = "", ()
                if finish is not None:
                    text, logprobs, hits = c.text.release(final=True)
            else:
                text, logprobs, hits = c.text.feed(
                    delta.text, delta.logprobs, final=finish is not None or bool(delta.tool_calls)
                )
            self._count(hits)
            for call in delta.tool_calls:
                if call.index not in c.calls:
                    calls += self._close_calls(c)
                    c.calls[call.index] = []
                c.calls[call.index].append(call.arguments)
                if call.id is not None or call.name is not None:
                    calls.append(ToolCallDelta(call.index, call.id, call.name, ""))
            if finish is not None:
                calls += self._close_calls(c)
        else:
            calls = list(delta.tool_calls)
        cap = self.policy.max_output_chars
        if cap is not None and len(text) > cap - c.sent:
            text, logprobs = text[: max(0, cap - c.sent)], ()
            finish = "length"
            stop = None
            c.done, c.text = True, None
            self.stage.decide(self.ctx, "output", "max_output_chars", "cap")
        c.sent += len(text)
        # The answer's token ids are its text before redaction: they never leave a watched stream.
        return replace(
            delta,
            text=text,
            logprobs=tuple(logprobs),
            tool_calls=tuple(calls),
            finish_reason=finish,
            stop_sequence=stop,
            tokens=None,
        )

    def _close_calls(self, c: _ChoiceState) -> list[ToolCallDelta]:
        out = []
        for index in sorted(c.calls):
            arguments, hits = redact_json(self.detectors, "".join(c.calls[index]))
            self._count(hits)
            if arguments:
                out.append(ToolCallDelta(index, arguments=arguments))
        c.calls.clear()
        return out

    def _count(self, hits: Iterable[Hit]) -> None:
        self.stage.record(self.ctx, "output", hits)


# ----- the stage -------------------------------------------------------------------------------------
def _texts(request: Request) -> list[str]:
    """Every piece of text in a request that the policy reads."""
    if isinstance(request, EmbedRequest):
        return [x for x in request.inputs if isinstance(x, str)]
    if request.kind == "completion":
        return [request.prompt] if isinstance(request.prompt, str) else []
    out: list[str] = []
    for m in request.messages:
        out.append(m.content)
        out.extend(c.arguments for c in m.tool_calls)
    return out


def _size(request: Request) -> int:
    """Characters of text (token ids count one each)."""
    tokens = 0
    if isinstance(request, EmbedRequest):
        tokens = sum(len(x) for x in request.inputs if not isinstance(x, str))
    else:
        tokens = len(request.prefix_tokens)
        if request.kind == "completion" and not isinstance(request.prompt, str):
            tokens += len(request.prompt)
    return tokens + sum(len(t) for t in _texts(request))


def _param(request: Request) -> str:
    if isinstance(request, EmbedRequest):
        return "input"
    return "prompt" if request.kind == "completion" else "messages"


def _has_token_ids(request: Request) -> bool:
    if isinstance(request, EmbedRequest):
        return any(not isinstance(x, str) for x in request.inputs)
    if request.prefix_tokens:
        return True
    return request.kind == "completion" and not isinstance(request.prompt, str)


def _redacted_request(detectors: Sequence[Detector], request: Request) -> tuple[Request, list[Hit]]:
    if not any(may_match(detectors, t) for t in _texts(request)):
        return request, []  # most requests: nothing to look at twice, nothing to rebuild
    hits: list[Hit] = []

    def text(value: str) -> str:
        new, found = redact_text(detectors, value)
        hits.extend(found)
        return new

    def arguments(value: str) -> str:
        new, found = redact_json(detectors, value)
        hits.extend(found)
        return new

    if isinstance(request, EmbedRequest):
        redacted: Request = replace(
            request, inputs=tuple(text(x) if isinstance(x, str) else x for x in request.inputs)
        )
    elif request.kind == "completion":
        prompt = request.prompt
        redacted = replace(request, prompt=text(prompt) if isinstance(prompt, str) else prompt)
    else:
        messages = tuple(
            replace(
                m,
                content=text(m.content),
                tool_calls=tuple(replace(c, arguments=arguments(c.arguments)) for c in m.tool_calls),
            )
            for m in request.messages
        )
        redacted = replace(request, messages=messages)
    return (redacted, hits) if hits else (request, [])


def _inspect(policy: Policy, request: Request) -> tuple[Request, list[Hit], Detector | None]:
    """The request redacted, the matches, and the first blocked pattern found in the original text
    (checked on its own: a redaction overlapping a blocked phrase must not hide it)."""
    redacted, hits = _redacted_request(policy.input_detectors, request)
    texts = _texts(request)
    blocked = next((d for d in policy.block if any(d.pattern.search(t) for t in texts)), None)
    return redacted, hits, blocked


class PolicyStage(StageBase):
    """The pipeline's "policy" stage (after "validate", before "route"); see the module's docstring."""

    name = "policy"

    def __init__(self, default: Policy, named: Mapping[str, Policy] | None = None) -> None:
        self.default = default
        self.named = dict(named or {})
        self.counts: collections.Counter[Decision] = collections.Counter()
        self._warned: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> PolicyStage:
        return cls(
            Policy.from_settings("default", settings.policy),
            {name: Policy.from_settings(name, p) for name, p in settings.policies.items()},
        )

    @property
    def enabled(self) -> bool:
        """Whether any policy does something (the service leaves the stage out otherwise)."""
        return self.default.active or any(p.active for p in self.named.values())

    def policy_for(self, principal: Principal) -> Policy:
        """The key's named policy, else the default. A name the configuration lacks (the policy was
        removed after the key was made) falls back to the default, with one warning per name."""
        if principal.policy is None:
            return self.default
        found = self.named.get(principal.policy)
        if found is None:
            if principal.policy not in self._warned:
                self._warned.add(principal.policy)
                log.warning(
                    "key %r names policy %r, which is not in [policies]; the default policy applies",
                    principal.name,
                    principal.policy,
                )
            return self.default
        return found

    # ----- decisions ---------------------------------------------------------------------------------
    def decide(self, ctx: RequestContext, direction: str, rule: str, action: str, count: int = 1) -> None:
        """Count a decision and note it for the request's audit record (one entry per kind)."""
        self.counts[(direction, rule, action)] += count
        entries: list[dict[str, Any]] = ctx.attrs.setdefault("policy.decisions", [])
        for entry in entries:
            if (entry["direction"], entry["rule"], entry["action"]) == (direction, rule, action):
                entry["count"] += count
                return
        entries.append({"direction": direction, "rule": rule, "action": action, "count": count})

    def record(self, ctx: RequestContext, direction: str, hits: Iterable[Hit]) -> None:
        for rule, n in collections.Counter(h.rule for h in hits).items():
            self.decide(ctx, direction, rule, _action(rule), n)

    # ----- hooks -------------------------------------------------------------------------------------
    async def before(self, ctx: RequestContext, request: Request) -> Request:
        policy = self.policy_for(ctx.principal)
        if not policy.active:
            return request
        ctx.attrs["policy.active"] = policy
        cap, size = policy.max_input_chars, _size(request)
        if cap is not None and size > cap:
            self.decide(ctx, "input", "max_input_chars", "cap")
            raise RequestError(
                f"the request carries {size} characters of text; the policy allows at most {cap}",
                param=_param(request),
                code="policy_input_too_large",
            )
        if policy.input_detectors:
            if _has_token_ids(request):
                raise RequestError(
                    "the governance policy reads the prompt's text: send text, not token ids",
                    param=_param(request),
                    code="policy_needs_text",
                )
            if size > _BIG_INPUT:  # megabytes of text take a second or more: not on the event loop
                redacted, hits, blocked = await asyncio.to_thread(_inspect, policy, request)
            else:
                redacted, hits, blocked = _inspect(policy, request)
            if "audit.request" in ctx.attrs:  # the audit record keeps what the model was given
                ctx.attrs["audit.request"] = redacted
            if blocked is not None:
                self.decide(ctx, "input", blocked.rule, "block")
                raise RefusedError(
                    f"the request was refused by the governance policy (rule {blocked.rule})",
                    code="policy_blocked",
                )
            self.record(ctx, "input", hits)
            request = redacted
        out_cap = policy.max_output_chars
        if out_cap is not None and isinstance(request, InferenceRequest):
            bound = out_cap * _TOKENS_PER_CHAR
            if request.sampling.max_tokens is None or request.sampling.max_tokens > bound:
                request = with_max_tokens(request, bound)
        return request

    def on_delta(self, ctx: RequestContext, delta: Delta) -> Delta:
        state: _StreamState | None = ctx.attrs.get("policy.stream")
        if state is None:
            policy: Policy | None = ctx.attrs.get("policy.active")
            if policy is None or not policy.watches_output:
                return delta
            state = ctx.attrs["policy.stream"] = _StreamState(self, ctx, policy)
        return state.feed(delta)

    async def after(self, ctx: RequestContext, answer: Answer) -> Answer:
        policy: Policy | None = ctx.attrs.get("policy.active")
        # A stream's answer was built from the deltas as on_delta had already rewritten them.
        if policy is None or ctx.stream or not isinstance(answer, Result) or not policy.watches_output:
            return answer
        detectors, cap = policy.output_detectors, policy.max_output_chars
        for choice in answer.choices:
            choice.tokens = None  # the answer's token ids are its text before redaction
            text, hits = redact_text(detectors, choice.text)
            self.record(ctx, "output", hits)
            cut = cap if cap is not None and len(text) > cap else None
            if hits or cut is not None:
                kept_to = None if cut is None else original_offset(cut, hits)
                choice.logprobs = logprobs_kept(choice.logprobs, choice.text, hits, kept_to)
            if cut is not None:
                text = text[:cut]
                choice.finish_reason = "length"
                choice.stop_sequence = None
                self.decide(ctx, "output", "max_output_chars", "cap")
            choice.text = text
            calls = []
            for call in choice.tool_calls:
                arguments, found = redact_json(detectors, call.arguments)
                self.record(ctx, "output", found)
                calls.append(replace(call, arguments=arguments) if found else call)
            choice.tool_calls = calls
        return answer

    # ----- operations (MCP tools that run no model) ----------------------------------------------------
    async def before_operation(self, ctx: RequestContext, op: Operation) -> Operation:
        """Blocked text in the arguments refuses the call; detected text in them is redacted before the
        tool sees it (a JSON string stays JSON)."""
        policy = self.policy_for(ctx.principal)
        if not policy.active:
            return op
        ctx.attrs["policy.active"] = policy
        cap = policy.max_input_chars
        if cap is not None and len(op.arguments) > cap:
            self.decide(ctx, "input", "max_input_chars", "cap")
            raise RequestError(f"the call carries {len(op.arguments)} characters; the policy allows {cap}")
        blocked = next((d for d in policy.block if d.pattern.search(op.arguments)), None)
        if blocked is not None:
            self.decide(ctx, "input", blocked.rule, "block")
            raise RefusedError(
                f"the call was refused by the governance policy (rule {blocked.rule})", code="policy_blocked"
            )
        arguments, hits = redact_json(policy.input_detectors, op.arguments)
        if not hits:
            return op
        self.record(ctx, "input", hits)
        op = replace(op, arguments=arguments)
        if "audit.operation" in ctx.attrs:
            ctx.attrs["audit.operation"] = op
        return op

    async def after_operation(
        self, ctx: RequestContext, op: Operation, result: OperationResult
    ) -> OperationResult:
        """What the tool gave (a file's text, a web page) is redacted like a model's answer."""
        policy: Policy | None = ctx.attrs.get("policy.active")
        if policy is None or not policy.watches_output or not result.output:
            return result
        output, hits = redact_json(policy.output_detectors, result.output)
        if hits:
            self.record(ctx, "output", hits)
            result.output = output
        return result

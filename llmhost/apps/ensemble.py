"""Ensembles: one request to several members at once, their answers combined into one.

A member is anything that answers an :class:`InferenceRequest` with a :class:`Result` (a route target
inside the gateway, or a whole pipeline run for ``POST /v1/ensemble``); :func:`run_ensemble` calls
them in parallel, so the wall time is the slowest member's (or, for ``first``, the fastest valid
one's), and a member that fails or times out drops out while the others still count. Aggregations:

``vote``
    The majority over normalised answers (case, whitespace and surrounding punctuation ignored); when
    every answer is a JSON object, the majority per top-level field, merged into one object. A tie goes
    to the member listed first.
``judge``
    A judge model reads the question and the numbered answers and picks one, with its reason (``merge``:
    writes one answer from them); its output is held to a JSON schema, so it always parses. If the
    judge fails, the ensemble falls back to ``vote`` and says so in the reason.
``best_of``
    The answer with the highest mean token log-probability (members are asked for log-probabilities;
    one that cannot give them ranks last).
``first``
    The first valid answer (non-empty; valid JSON when JSON was asked for); the others are cancelled.
``all``
    Every answer, one choice each, in member order.

The outcome says which members answered, their latency, usage and errors, and why the answer won.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from llmhost.core.types import (
    ChatMessage,
    Choice,
    InferenceRequest,
    ResponseFormat,
    Result,
    Sampling,
    Usage,
    new_id,
)
from llmhost.errors import NotReadyError, RequestError, classify

__all__ = [
    "AGGREGATES",
    "Aggregate",
    "EnsembleSpec",
    "Member",
    "MemberAnswer",
    "run_ensemble",
]

Aggregate = Literal["vote", "judge", "best_of", "first", "all"]
AGGREGATES: tuple[str, ...] = ("vote", "judge", "best_of", "first", "all")

MemberCall = Callable[[InferenceRequest], Awaitable[Result]]
JUDGE_MAX_TOKENS = 256  # a verdict: a candidate's number and a reason of at most 160 characters
JUDGE_MERGE_MAX_TOKENS = 1024  # a merged answer (cut short, it does not parse and the vote decides)


@dataclass(frozen=True, slots=True)
class Member:
    source: str  # what the client sees: a model or route name, or "provider/model"
    call: MemberCall


@dataclass(frozen=True, slots=True)
class EnsembleSpec:
    aggregate: Aggregate = "vote"
    judge: Member | None = None
    merge: bool = False  # judge: write one answer from the candidates instead of picking one
    timeout: float | None = None  # seconds a member may take; a slower one drops out


@dataclass(slots=True)
class MemberAnswer:
    source: str
    result: Result | None = None
    exc: Exception | None = None
    latency_s: float = 0.0
    cancelled: bool = False

    @property
    def error(self) -> str | None:
        return None if self.exc is None else (str(self.exc) or type(self.exc).__name__)

    @property
    def status(self) -> int | None:
        return None if self.exc is None else classify(self.exc).status

    @property
    def text(self) -> str:
        return self.result.text if self.result is not None else ""

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "latency_ms": round(self.latency_s * 1000, 1)}
        if self.result is not None:
            u = self.result.usage
            out["status"] = "ok"
            out["text"] = self.result.text
            out["usage"] = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}
            if (score := mean_logprob(self.result)) is not None:
                out["mean_logprob"] = round(score, 4)
        else:
            out["status"] = "cancelled" if self.cancelled else "error"
            if self.error:
                out["error"] = self.error
        return out


@dataclass(slots=True)
class _Outcome:
    choices: list[Choice]
    winners: list[int]  # member indices behind the choices
    reason: str
    extra_usage: Usage = field(default_factory=Usage)


# ----- helpers -----------------------------------------------------------------------------------------
_SPACES = re.compile(r"\s+")
_EDGE = " \t\n.,;:!?\"'`()[]{}"


def normalise(text: str) -> str:
    return _SPACES.sub(" ", text.strip().strip(_EDGE).casefold())


def mean_logprob(result: Result | None) -> float | None:
    choice = result.choices[0] if result is not None and result.choices else None
    if choice is None or not choice.logprobs:
        return None
    return sum(t.logprob for t in choice.logprobs) / len(choice.logprobs)


def _json_object(text: str) -> dict[str, Any] | None:
    """``text`` as a JSON object, control characters in strings allowed (a grammar lets them through)."""
    try:
        value = json.loads(text, strict=False)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _valid(result: Result | None, request: InferenceRequest) -> bool:
    """An answer ``first`` may take: not empty, and JSON when JSON was asked for."""
    if result is None:
        return False
    text = result.text
    if not text.strip() and not (result.choices and result.choices[0].tool_calls):
        return False
    if request.response_format.type in ("json", "json_schema"):
        return _json_object(text) is not None
    return True


# ----- running the members -----------------------------------------------------------------------------
async def _call(member: Member, request: InferenceRequest, timeout: float | None) -> MemberAnswer:
    started = time.perf_counter()
    answer = MemberAnswer(member.source)
    try:
        answer.result = await asyncio.wait_for(member.call(request), timeout)
    except TimeoutError:
        answer.exc = NotReadyError(f"no answer within {timeout:g} s")
    except asyncio.CancelledError:
        answer.cancelled = True
        raise
    except Exception as exc:
        answer.exc = exc
    finally:
        answer.latency_s = time.perf_counter() - started
    return answer


async def _gather(
    members: Sequence[Member], request: InferenceRequest, spec: EnsembleSpec
) -> list[MemberAnswer]:
    tasks = [asyncio.create_task(_call(m, request, spec.timeout)) for m in members]
    try:
        if spec.aggregate != "first":
            return list(await asyncio.gather(*tasks))
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(_valid(t.result().result, request) for t in done):
                break
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        for t in tasks:
            t.cancel()
    answers = []
    for member, t in zip(members, tasks, strict=True):
        if t.cancelled():
            answers.append(MemberAnswer(member.source, cancelled=True))
        else:
            answers.append(t.result())
    return answers


# ----- aggregations ------------------------------------------------------------------------------------
def _choice_of(answer: MemberAnswer, index: int = 0) -> Choice:
    assert answer.result is not None
    choice = replace(answer.result.choices[0]) if answer.result.choices else Choice()
    choice.index = index
    return choice


def _vote(answers: list[MemberAnswer], ok: list[int]) -> _Outcome:
    objects = [o for i in ok if (o := _json_object(answers[i].text)) is not None]
    if len(objects) == len(ok):
        merged: dict[str, Any] = {}
        keys = list(dict.fromkeys(k for o in objects for k in o))
        for key in keys:
            values = [json.dumps(o[key], sort_keys=True) for o in objects if key in o]
            top, _ = Counter(values).most_common(1)[0]
            merged[key] = json.loads(top)
        agree = [i for i, o in zip(ok, objects, strict=True) if o == merged]
        winner = agree[0] if agree else ok[0]
        choice = _choice_of(answers[winner])
        choice.text = json.dumps(merged)
        return _Outcome([choice], [winner], f"field-wise majority of {len(ok)} JSON answers")
    groups: dict[str, list[int]] = {}
    for i in ok:
        groups.setdefault(normalise(answers[i].text), []).append(i)
    best = max(groups.values(), key=lambda g: (len(g), -g[0]))
    return _Outcome([_choice_of(answers[best[0]])], [best[0]], f"{len(best)} of {len(ok)} answers agree")


def _best_of(answers: list[MemberAnswer], ok: list[int]) -> _Outcome:
    scored = [(mean_logprob(answers[i].result), i) for i in ok]
    with_scores = [(s, i) for s, i in scored if s is not None]
    if not with_scores:
        return _Outcome([_choice_of(answers[ok[0]])], [ok[0]], "no member gave log-probabilities")
    score, winner = max(with_scores, key=lambda x: (x[0], -x[1]))
    return _Outcome(
        [_choice_of(answers[winner])], [winner], f"highest mean token log-probability ({score:.3f})"
    )


# A bounded reason: the whole verdict fits in JUDGE_MAX_TOKENS, so even a rambling judge's verdict parses.
_REASON = {"type": "string", "maxLength": 160}


def _pick_schema(n: int) -> dict[str, Any]:
    """The judge's verdict: one of the candidate numbers, and why (the grammar allows nothing else)."""
    return {
        "type": "object",
        "properties": {"choice": {"enum": list(range(1, n + 1))}, "reason": _REASON},
        "required": ["choice", "reason"],
    }


_MERGE_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "reason": _REASON},
    "required": ["answer", "reason"],
}


def _question(request: InferenceRequest) -> str:
    if request.kind == "completion":
        return request.prompt if isinstance(request.prompt, str) else "(token ids)"
    return "\n".join(f"{m.role}: {m.content}" for m in request.messages)


def judge_request(
    request: InferenceRequest, answers: list[MemberAnswer], ok: list[int], merge: bool
) -> InferenceRequest:
    candidates = "\n\n".join(f"[{n}] {answers[i].text.strip()}" for n, i in enumerate(ok, 1))
    task = (
        "Write the best single answer, drawing on the candidates, and say why."
        if merge
        else f"Pick the best candidate (a number from 1 to {len(ok)}) and say why."
    )
    prompt = (
        f"You are judging answers to this request:\n\n{_question(request)}\n\nCandidate answers:\n\n"
        f"{candidates}\n\n{task} Reply with JSON only."
    )
    schema = _MERGE_SCHEMA if merge else _pick_schema(len(ok))
    return InferenceRequest(
        kind="chat",
        model="",
        messages=(ChatMessage("user", prompt),),
        sampling=Sampling(temperature=0.0, max_tokens=JUDGE_MERGE_MAX_TOKENS if merge else JUDGE_MAX_TOKENS),
        response_format=ResponseFormat("json_schema", schema),
    )


async def _judge(
    request: InferenceRequest, answers: list[MemberAnswer], ok: list[int], spec: EnsembleSpec
) -> _Outcome:
    assert spec.judge is not None
    judged = await _call(spec.judge, judge_request(request, answers, ok, spec.merge), spec.timeout)
    verdict = _json_object(judged.text) if judged.result is not None else None
    usage = judged.result.usage if judged.result is not None else Usage()
    if verdict is not None and spec.merge and isinstance(verdict.get("answer"), str):
        choice = _choice_of(answers[ok[0]])
        choice.text, choice.logprobs, choice.tool_calls = verdict["answer"], None, []
        return _Outcome(
            [choice], list(ok), f"merged by {spec.judge.source}: {verdict.get('reason', '')}", usage
        )
    pick = verdict.get("choice") if verdict is not None else None
    if verdict is not None and isinstance(pick, int) and not isinstance(pick, bool) and 1 <= pick <= len(ok):
        winner = ok[pick - 1]
        reason = f"picked by {spec.judge.source}: {verdict.get('reason', '')}"
        return _Outcome([_choice_of(answers[winner])], [winner], reason, usage)
    why = judged.error or "its verdict did not name a candidate"
    fallback = _vote(answers, ok)
    fallback.reason = f"judge {spec.judge.source} failed ({why}); {fallback.reason}"
    fallback.extra_usage = usage
    return fallback


# ----- the entry point ---------------------------------------------------------------------------------
async def run_ensemble(
    members: Sequence[Member], request: InferenceRequest, spec: EnsembleSpec, *, name: str
) -> Result:
    """Ask every member, combine their answers by ``spec.aggregate``; the Result's ``ensemble`` says how.

    Raises when no member answered: the first member's error if all failed alike (a 400 stays a 400),
    else a 503 that lists them.
    """
    if not members:
        raise RequestError("an ensemble needs at least one member", param="models")
    if spec.aggregate == "judge" and spec.judge is None:
        raise RequestError("the judge aggregate needs a judge model", param="judge")
    ask = request
    if spec.aggregate == "best_of" and request.sampling.logprobs is None:
        ask = replace(request, sampling=replace(request.sampling, logprobs=0))
    started = time.perf_counter()
    answers = await _gather(members, ask, spec)
    ok = [i for i, a in enumerate(answers) if a.result is not None]
    if spec.aggregate == "first":  # the fastest valid answer, else the fastest answer
        ok = sorted(ok, key=lambda i: (not _valid(answers[i].result, request), answers[i].latency_s))[:1]
    if not ok:
        raise _none_answered(answers)
    if spec.aggregate == "vote":
        outcome = _vote(answers, ok)
    elif spec.aggregate == "best_of":
        outcome = _best_of(answers, ok)
    elif spec.aggregate == "judge":
        outcome = await _judge(request, answers, ok, spec)
    elif spec.aggregate == "first":
        outcome = _Outcome([_choice_of(answers[ok[0]])], [ok[0]], "the first valid answer")
    else:
        outcome = _Outcome([_choice_of(answers[i], n) for n, i in enumerate(ok)], ok, "every answer")
    if request.sampling.logprobs is None:
        for choice in outcome.choices:
            choice.logprobs = None
    usage = sum((a.result.usage for a in answers if a.result is not None), outcome.extra_usage)
    result = Result(new_id("ens"), name, outcome.choices, usage)
    result.target = ",".join(answers[i].source for i in outcome.winners)
    result.ensemble = {
        "aggregate": spec.aggregate,
        "chosen": [answers[i].source for i in outcome.winners],
        "reason": outcome.reason,
        "wall_ms": round((time.perf_counter() - started) * 1000, 1),
        "members": [a.describe() for a in answers],
    }
    return result


def _none_answered(answers: list[MemberAnswer]) -> Exception:
    """A client mistake that every member refused stays the client's (a 400 is a 400); anything else is
    a 503 that names each member's error."""
    failed = [a for a in answers if a.exc is not None]
    if failed and all(a.status is not None and 400 <= a.status < 500 and a.status != 429 for a in failed):
        assert failed[0].exc is not None
        return failed[0].exc
    listed = "; ".join(f"{a.source}: {a.error or 'cancelled'}" for a in answers)
    return NotReadyError(f"no member of the ensemble answered ({listed})")

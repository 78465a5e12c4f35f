"""Ensemble aggregation (llmhost.apps.ensemble) over in-process members: members run at once, failures
and timeouts drop out, and each aggregate picks the answer it should — vote (text and JSON fields),
best_of, first (the rest cancelled), all, judge (pick, merge, and falling back to vote)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from llmhost.apps.ensemble import EnsembleSpec, Member, judge_request, normalise, run_ensemble
from llmhost.core.types import (
    ChatMessage,
    Choice,
    InferenceRequest,
    ResponseFormat,
    Result,
    Sampling,
    TokenLogprob,
    Usage,
)
from llmhost.errors import ModelNotFoundError, NotReadyError, RequestError

REQ = InferenceRequest("chat", "ens", messages=(ChatMessage("user", "What is 2 + 2?"),))


def answering(
    text: str,
    *,
    logprobs: list[float] | None = None,
    wait: Awaitable[Any] | None = None,
    delay: float = 0.0,
    seen: list[InferenceRequest] | None = None,
) -> Callable[[InferenceRequest], Awaitable[Result]]:
    async def call(request: InferenceRequest) -> Result:
        if seen is not None:
            seen.append(request)
        if wait is not None:
            await wait
        if delay:
            await asyncio.sleep(delay)
        lps = [TokenLogprob(b"t", lp, ()) for lp in logprobs] if logprobs is not None else None
        return Result("r", request.model, [Choice(0, text, logprobs=lps, finish_reason="stop")], Usage(5, 2))

    return call


def failing(exc: Exception) -> Callable[[InferenceRequest], Awaitable[Result]]:
    async def call(request: InferenceRequest) -> Result:
        raise exc

    return call


def ensemble(members: list[tuple[str, Any]], request: InferenceRequest = REQ, **spec: Any) -> Result:
    return asyncio.run(
        run_ensemble([Member(s, c) for s, c in members], request, EnsembleSpec(**spec), name="ens")
    )


def test_members_run_at_once_and_usage_adds_up() -> None:
    async def go() -> Result:
        started = asyncio.Event()
        # The first member answers only once the second has started: run one after the other, it never would.
        first = answering("4", wait=started.wait())

        async def second(request: InferenceRequest) -> Result:
            started.set()
            return await answering("4")(request)

        spec = EnsembleSpec("vote", timeout=5)
        return await run_ensemble([Member("a", first), Member("b", second)], REQ, spec, name="ens")

    result = asyncio.run(go())
    assert result.text == "4"
    assert result.usage == Usage(10, 4)
    assert result.model == "ens"
    assert [m["status"] for m in result.ensemble["members"]] == ["ok", "ok"]  # type: ignore[index]


def test_vote_takes_the_majority_of_normalised_answers() -> None:
    result = ensemble([("a", answering("Five.")), ("b", answering("4")), ("c", answering(" 4! "))])
    assert result.text == "4"
    assert result.ensemble is not None
    assert result.ensemble["chosen"] == ["b"]
    assert result.ensemble["reason"] == "2 of 3 answers agree"
    assert normalise('  "The  Answer"! ') == "the answer"


def test_a_tied_vote_goes_to_the_member_listed_first() -> None:
    result = ensemble([("a", answering("yes")), ("b", answering("no"))])
    assert result.text == "yes"


def test_vote_over_json_answers_is_field_by_field() -> None:
    members = [
        ("a", answering('{"city": "Oslo", "temp": 3}')),
        ("b", answering('{"city": "Oslo", "temp": 4}')),
        ("c", answering('{"city": "Bergen", "temp": 4}')),
    ]
    result = ensemble(members)
    assert json.loads(result.text) == {"city": "Oslo", "temp": 4}
    assert result.ensemble["reason"] == "field-wise majority of 3 JSON answers"  # type: ignore[index]


def test_best_of_asks_for_logprobs_and_takes_the_most_likely_answer() -> None:
    seen: list[InferenceRequest] = []
    members = [
        ("a", answering("maybe", logprobs=[-2.0, -1.0], seen=seen)),
        ("b", answering("4", logprobs=[-0.1, -0.3], seen=seen)),
        ("c", answering("no logprobs", seen=seen)),
    ]
    result = ensemble(members, aggregate="best_of")
    assert result.text == "4"
    assert all(r.sampling.logprobs == 0 for r in seen)  # asked for, though the client did not
    assert result.choices[0].logprobs is None  # and hidden again
    assert result.ensemble["members"][1]["mean_logprob"] == pytest.approx(-0.2)  # type: ignore[index]


def test_first_takes_the_fastest_valid_answer_and_cancels_the_others() -> None:
    never = asyncio.Event()
    members = [
        ("slow", answering("late", wait=never.wait())),
        ("empty", answering("")),  # fast, but not valid
        ("quick", answering("4", delay=0.01)),
    ]
    result = ensemble(members, aggregate="first")
    assert result.text == "4"
    statuses = {m["source"]: m["status"] for m in result.ensemble["members"]}  # type: ignore[index]
    assert statuses == {"slow": "cancelled", "empty": "ok", "quick": "ok"}


def test_first_with_json_asked_skips_an_answer_that_is_not_json() -> None:
    request = InferenceRequest("chat", "ens", messages=REQ.messages, response_format=ResponseFormat("json"))
    result = ensemble(
        [("text", answering("plain words")), ("json", answering('{"a": 1}', delay=0.02))],
        request,
        aggregate="first",
    )
    assert result.text == '{"a": 1}'


def test_all_returns_every_answer_with_its_source() -> None:
    result = ensemble(
        [("a", answering("one")), ("b", failing(NotReadyError("down"))), ("c", answering("three"))],
        aggregate="all",
    )
    assert [(c.index, c.text) for c in result.choices] == [(0, "one"), (1, "three")]
    assert result.ensemble["chosen"] == ["a", "c"]  # type: ignore[index]
    assert result.ensemble["members"][1] == {  # type: ignore[index]
        "source": "b",
        "latency_ms": result.ensemble["members"][1]["latency_ms"],  # type: ignore[index]
        "status": "error",
        "error": "down",
    }


def test_failed_and_timed_out_members_drop_out() -> None:
    never = asyncio.Event()
    result = ensemble(
        [
            ("down", failing(NotReadyError("down"))),
            ("stuck", answering("x", wait=never.wait())),
            ("ok", answering("4")),
        ],
        timeout=0.2,
    )
    assert result.text == "4"
    errors = {m["source"]: m.get("error") for m in result.ensemble["members"]}  # type: ignore[index]
    assert errors == {"down": "down", "stuck": "no answer within 0.2 s", "ok": None}


def test_when_no_member_answers_a_client_error_stays_the_clients() -> None:
    with pytest.raises(ModelNotFoundError):
        ensemble([("a", failing(ModelNotFoundError("nope"))), ("b", failing(ModelNotFoundError("nada")))])
    with pytest.raises(NotReadyError, match="no member of the ensemble answered"):
        ensemble([("a", failing(ModelNotFoundError("nope"))), ("b", failing(NotReadyError("down")))])
    with pytest.raises(RequestError, match="needs a judge"):
        ensemble([("a", answering("x"))], aggregate="judge")


def _judge(verdict: dict[str, Any] | str, seen: list[InferenceRequest]) -> Member:
    text = verdict if isinstance(verdict, str) else json.dumps(verdict)
    return Member("judge-model", answering(text, seen=seen))


def test_the_judge_picks_an_answer_with_its_reason() -> None:
    seen: list[InferenceRequest] = []
    members = [("a", answering("5")), ("b", answering("4"))]
    result = ensemble(members, aggregate="judge", judge=_judge({"choice": 2, "reason": "arithmetic"}, seen))
    assert result.text == "4"
    assert result.ensemble["reason"] == "picked by judge-model: arithmetic"  # type: ignore[index]
    assert result.usage == Usage(15, 6)  # the judge's tokens count too
    (asked,) = seen
    assert asked.response_format.type == "json_schema"  # its verdict always parses
    prompt = asked.messages[0].content
    assert "What is 2 + 2?" in prompt and "[1] 5" in prompt and "[2] 4" in prompt


def test_the_judge_can_merge_the_answers() -> None:
    merged = {"answer": "It is 4.", "reason": "both close"}
    result = ensemble(
        [("a", answering("4")), ("b", answering("four"))],
        aggregate="judge",
        merge=True,
        judge=_judge(merged, []),
    )
    assert result.text == "It is 4."
    assert result.ensemble["chosen"] == ["a", "b"]  # type: ignore[index]


@pytest.mark.parametrize("verdict", [{"choice": 9, "reason": "?"}, "not json", {"pick": 1}])
def test_a_judge_that_names_no_candidate_falls_back_to_the_vote(verdict: Any) -> None:
    members = [("a", answering("4")), ("b", answering("5")), ("c", answering("4"))]
    result = ensemble(members, aggregate="judge", judge=_judge(verdict, []))
    assert result.text == "4"
    assert result.ensemble["reason"].startswith("judge judge-model failed")  # type: ignore[index]


def test_the_judge_request_numbers_only_the_answers_that_came() -> None:
    from llmhost.apps.ensemble import MemberAnswer

    answers = [
        MemberAnswer("a", Result("r", "m", [Choice(0, "first")])),
        MemberAnswer("b", exc=NotReadyError("down")),
        MemberAnswer("c", Result("r", "m", [Choice(0, "third")])),
    ]
    req = judge_request(REQ, answers, [0, 2], merge=False)
    assert "[1] first" in req.messages[0].content and "[2] third" in req.messages[0].content
    assert "from 1 to 2" in req.messages[0].content
    assert req.sampling == Sampling(temperature=0.0, max_tokens=256)

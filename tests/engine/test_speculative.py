"""Prompt-lookup (n-gram) speculative decoding: the drafts, the verification, and that the output is
the output of plain decoding (tiny f32 model, so kernel rounding cannot flip an argmax)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmhost.engine.async_engine import Engine
from llmhost.engine.ngram import NgramIndex, adapt_draft
from llmhost.engine.scheduler import SPECULATE_BELOW, Scheduler
from llmhost.engine.types import FinishReason, GenerationRequest, SamplingParams
from tests.engine.test_engine import EOS, make_engine, params, run_many, run_one

# A prompt that repeats itself: what a code edit or a quoting answer looks like to the model.
LOOP = [1] + [5, 9, 14, 22, 31, 47, 60, 75] * 6


def fresh_run(
    path: Path, tokens: list[int], p: SamplingParams, *, n_slots: int = 4
) -> tuple[list[int], Engine]:
    """One request on an engine of its own (no prefix cache from an earlier run)."""
    engine = make_engine(path, n_slots=n_slots)
    try:
        ids, last = run_one(engine, "r", tokens, p)
        assert last.completion_tokens == len(ids)
        return ids, engine
    finally:
        engine.stop()


@pytest.fixture
def spec_engine(tiny_model_path: Path) -> Iterator[Engine]:
    engine = make_engine(tiny_model_path)
    yield engine
    engine.stop()


def test_the_index_drafts_what_followed_the_latest_longest_match() -> None:
    index = NgramIndex()
    tokens = [1, 2, 3, 4, 9, 8, 2, 3, 4, 5, 6, 7, 2, 3, 4]
    # "2 3 4" occurred twice before; the latest (followed by 5 6 7) wins.
    assert index.draft(tokens, 3) == [5, 6, 7]
    tokens += [9]
    # Now "2 3 4 9" (four tokens) matches the first occurrence: the longest n-gram first.
    assert index.draft(tokens, 2) == [8, 2]
    tokens += [7]
    assert index.draft(tokens, 4) == []  # "4 9 7", "3 4 9 7": never seen
    assert index.draft([1, 2, 3], 4) == [] and index.draft(tokens, 0) == []


def test_a_loop_is_drafted_round_and_round() -> None:
    # In a loop the latest occurrence is right behind the tail: the draft repeats the period.
    assert NgramIndex().draft([7, 5, 5, 5, 5], 4) == [5, 5, 5, 5]
    assert NgramIndex().draft([1, 8, 9, 8, 9, 8, 9], 5) == [8, 9, 8, 9, 8]


def decoding(max_tokens: int, room: int) -> Scheduler:
    """A scheduler whose one speculative sequence has its prompt (LOOP[:20]) and first token done."""
    s = Scheduler(n_slots=2, n_ctx_slot=512, max_batch_tokens=64, max_draft_tokens=room)
    p = SamplingParams(max_tokens=max_tokens, temperature=0.0, speculative="ngram", draft_max=16)
    s.add(GenerationRequest("a", LOOP[:20], p))
    s.admit()
    s.schedule()
    s.update_from_output({"a": [LOOP[20]]}, lambda t: False)
    return s


def test_a_draft_takes_at_most_the_room_of_the_step() -> None:
    s = decoding(max_tokens=32, room=5)
    [chunk] = s.schedule().chunks
    assert chunk.n_draft == 5 and chunk.tokens == LOOP[20:26] and chunk.start_pos == 20
    # Two drafted tokens accepted, then a token that differs: three new tokens, and the KV cells of
    # the newest token and the two accepted ones are computed (the rejected three are not).
    [result] = s.update_from_output({"a": [*LOOP[21:23], 99]}, lambda t: False)
    assert result.new_tokens == (*LOOP[21:23], 99) and not result.finished
    assert result.sequence.num_computed == 23 and result.sequence.tokens[-1] == 99


def test_a_draft_never_runs_past_max_tokens() -> None:
    s = decoding(max_tokens=4, room=32)
    [chunk] = s.schedule().chunks
    # One token generated, three to go: at most two drafted, the token after them is the third.
    assert chunk.n_draft == 2
    [result] = s.update_from_output({"a": [*LOOP[21:23], 99]}, lambda t: False)
    assert result.finished and result.sequence.finish_reason is FinishReason.LENGTH
    assert result.sequence.num_completion_tokens == 4


def test_an_end_of_generation_token_inside_a_draft_ends_the_sequence() -> None:
    s = decoding(max_tokens=32, room=32)
    s.schedule()
    [result] = s.update_from_output({"a": [LOOP[21], 2]}, lambda t: t == 2)
    assert result.finished and result.sequence.finish_reason is FinishReason.STOP
    assert result.new_tokens == (LOOP[21],) and result.n_sampled == 2


def test_speculative_output_is_the_plain_output(tiny_model_path: Path) -> None:
    for tokens in (LOOP, [1] + [40 + (k * 7) % 30 for k in range(40)]):
        plain, _ = fresh_run(tiny_model_path, tokens, params(max_tokens=64))
        for draft_max in (1, 4, 16):
            spec, engine = fresh_run(
                tiny_model_path, tokens, params(max_tokens=64, speculative="ngram", draft_max=draft_max)
            )
            assert spec == plain
            stats = engine.stats_snapshot()
            assert stats.draft_tokens > 0 and 0 <= stats.draft_accepted <= stats.draft_tokens


def test_accepted_drafts_take_fewer_steps(tiny_model_path: Path) -> None:
    _, plain = fresh_run(tiny_model_path, LOOP, params(max_tokens=64))
    _, spec = fresh_run(tiny_model_path, LOOP, params(max_tokens=64, speculative="ngram"))
    accepted = spec.stats_snapshot().draft_accepted
    assert accepted > 0
    assert spec.stats_snapshot().steps == plain.stats_snapshot().steps - accepted


def test_seeded_sampling_is_the_same_with_and_without_drafts(tiny_model_path: Path) -> None:
    # Verification samples each drafted position with the sequence's own seeded sampler, in order, so
    # a seeded temperature draw gives the same tokens as plain decoding, not only greedy decoding.
    for extra in ({"temperature": 0.7, "seed": 3}, {"temperature": 0.9, "seed": 5, "top_k": 20}):
        plain, _ = fresh_run(tiny_model_path, LOOP, params(max_tokens=48, **extra))
        spec, _ = fresh_run(tiny_model_path, LOOP, params(max_tokens=48, speculative="ngram", **extra))
        assert spec == plain


def test_logprobs_come_one_per_token_with_drafts(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path)
    try:
        p = params(max_tokens=32, speculative="ngram", logprobs=2)
        outs = list(engine.generate_sync(GenerationRequest("r", LOOP, p)))
        assert sum(len(o.token_ids) for o in outs) == 32
        assert all(len(o.logprobs) == len(o.token_ids) for o in outs)
    finally:
        engine.stop()


def stop_inside_a_draft(engine: Engine, tokens: list[int], bias: dict[int, float]) -> str | None:
    """A stop string whose first occurrence ends on a token that is not the last of its step's tokens
    (so the tokens after it in that step were accepted from a draft), or None."""
    outs = list(
        engine.generate_sync(
            GenerationRequest("probe", tokens, params(max_tokens=64, speculative="ngram", logit_bias=bias))
        )
    )
    piece = engine.runner.vocab.piece
    text = b""
    for out in outs:
        for i, token in enumerate(out.token_ids):
            text += piece(token)
            if i == len(out.token_ids) - 1 or not piece(token):
                continue
            for n in range(1, 13):
                stop = text[-n:]
                if (
                    len(stop) == n
                    and stop.isascii()
                    and stop.decode().isprintable()
                    and text.find(stop) == len(text) - n
                ):
                    return stop.decode()
    return None


def test_a_stop_string_inside_an_accepted_draft_ends_the_text_there(tiny_model_path: Path) -> None:
    # Byte tokens, and a bias that keeps the random model to the prompt's letters (so it copies them).
    letters = [3 + ord(c) for c in "hello world "]
    bias = {EOS: -100.0, **{t: 30.0 for t in letters}}
    tokens = [1] + letters * 5
    engine = make_engine(tiny_model_path)
    try:
        stop = stop_inside_a_draft(engine, tokens, bias)
        assert stop is not None
        kw: dict[str, Any] = {"max_tokens": 64, "logit_bias": bias, "stop": (stop,)}
        outs = list(engine.generate_sync(GenerationRequest("s", tokens, params(speculative="ngram", **kw))))
        plain = list(engine.generate_sync(GenerationRequest("t", tokens, params(**kw))))
    finally:
        engine.stop()
    assert "".join(o.text for o in outs) == "".join(o.text for o in plain)
    assert outs[-1].finish_reason is plain[-1].finish_reason is FinishReason.STOP
    # The tokens drafted past the stop string are not counted or sent.
    assert outs[-1].completion_tokens == plain[-1].completion_tokens
    assert sum(len(o.token_ids) for o in outs) == outs[-1].completion_tokens


def test_concurrent_speculative_and_plain_streams_keep_their_outputs(tiny_model_path: Path) -> None:
    prompts = {f"r{i}": [1] + [5 + i, 9, 14 + i, 22, 31, 47 + i] * 5 for i in range(4)}
    alone = {rid: fresh_run(tiny_model_path, toks, params(max_tokens=40))[0] for rid, toks in prompts.items()}
    engine = make_engine(tiny_model_path)
    try:
        reqs = [
            (rid, toks, params(max_tokens=40, speculative="ngram" if i % 2 else None))
            for i, (rid, toks) in enumerate(prompts.items())
        ]
        together = run_many(engine, reqs)
    finally:
        engine.stop()
    assert together == alone


def test_the_draft_length_follows_how_well_drafts_do() -> None:
    assert adapt_draft(8, 8, 8, 16) == 10  # taken whole: two longer
    assert adapt_draft(15, 4, 4, 16) == 16  # never past the request's most
    assert adapt_draft(8, 8, 3, 16) == 7  # a miss: one shorter
    assert adapt_draft(1, 1, 0, 16) == 1  # never below one
    s = decoding(max_tokens=64, room=32)
    [chunk] = s.schedule().chunks
    first = chunk.n_draft
    s.update_from_output({"a": [*chunk.tokens[1:], 99]}, lambda t: False)
    assert s.get("a") is not None and s.get("a").draft_len == first + 2  # type: ignore[union-attr]


def test_drafts_stop_while_many_streams_decode() -> None:
    def drafts(n_streams: int) -> list[int]:
        s = Scheduler(n_slots=16, n_ctx_slot=512, max_batch_tokens=256, max_draft_tokens=64)
        p = SamplingParams(max_tokens=64, temperature=0.0, speculative="ngram")
        for i in range(n_streams):
            s.add(GenerationRequest(f"r{i}", LOOP[:20], p))
        s.admit()
        s.schedule()
        s.update_from_output({f"r{i}": [LOOP[20]] for i in range(n_streams)}, lambda t: False)
        return [c.n_draft for c in s.schedule().chunks]

    assert all(n > 0 for n in drafts(SPECULATE_BELOW - 1))
    assert drafts(SPECULATE_BELOW) == [0] * SPECULATE_BELOW

"""The scheduler, driven by hand-made step outputs: no model, no llama_cpp."""

from __future__ import annotations

import pytest

from llmhost.engine.scheduler import Scheduler, SequenceStatus
from llmhost.engine.types import FinishReason, GenerationRequest, SamplingParams
from llmhost.errors import ContextLengthError, EngineOverloadedError, RequestError

EOS = 2


def is_eog(token: int) -> bool:
    return token == EOS


def req(rid: str, n_prompt: int = 4, max_tokens: int | None = 8, first: int = 10) -> GenerationRequest:
    return GenerationRequest(rid, list(range(first, first + n_prompt)), SamplingParams(max_tokens=max_tokens))


def make(n_slots: int = 2, n_ctx: int = 64, budget: int = 16, max_waiting: int = 4) -> Scheduler:
    return Scheduler(n_slots=n_slots, n_ctx_slot=n_ctx, max_batch_tokens=budget, max_waiting=max_waiting)


def step(s: Scheduler, tokens: dict[str, int]) -> list[str]:
    s.admit()
    out = s.schedule()
    sampled = {c.request_id: [tokens.get(c.request_id, 99)] for c in out.chunks if c.sample}
    return [r.sequence.request_id for r in s.update_from_output(sampled, is_eog) if r.finished]


def test_prompt_is_prefilled_then_one_token_per_step() -> None:
    s = make()
    s.add(req("a", n_prompt=5))
    s.admit()
    out = s.schedule()
    assert [(c.request_id, len(c.tokens), c.start_pos, c.sample) for c in out.chunks] == [("a", 5, 0, True)]
    s.update_from_output({"a": [50]}, is_eog)
    out = s.schedule()
    assert [(c.tokens, c.start_pos) for c in out.chunks] == [([50], 5)]


def test_long_prompt_is_chunked_and_running_streams_keep_flowing() -> None:
    s = make(budget=8)
    s.add(req("a", n_prompt=3))
    step(s, {})
    s.add(req("b", n_prompt=20, first=100))
    s.admit()
    out = s.schedule()
    # "a" decodes its one token first; "b" gets the rest of the budget and no logits yet.
    assert [(c.request_id, len(c.tokens), c.sample) for c in out.chunks] == [("a", 1, True), ("b", 7, False)]
    s.update_from_output({"a": [60]}, is_eog)
    chunks_b = []
    for _ in range(3):
        out = s.schedule()
        chunks_b += [c for c in out.chunks if c.request_id == "b"]
        assert any(c.request_id == "a" for c in out.chunks)
        s.update_from_output({c.request_id: [60] for c in out.chunks if c.sample}, is_eog)
    assert [c.start_pos for c in chunks_b] == [7, 14, 20]
    assert chunks_b[1].sample is True and len(chunks_b[1].tokens) == 6


def test_max_tokens_finishes_with_length() -> None:
    s = make()
    seq = s.add(req("a", max_tokens=2))
    assert step(s, {}) == []
    assert step(s, {}) == ["a"]
    assert seq.finish_reason is FinishReason.LENGTH
    assert seq.num_completion_tokens == 2
    assert not s.has_work


def test_end_of_generation_token_finishes_with_stop_and_is_not_output() -> None:
    s = make()
    seq = s.add(req("a"))
    step(s, {"a": 7})
    assert step(s, {"a": EOS}) == ["a"]
    assert seq.finish_reason is FinishReason.STOP
    assert seq.output_tokens == [7]


def test_finished_sequences_leave_without_stopping_others_and_waiting_ones_join() -> None:
    s = make(n_slots=2)
    s.add(req("a", max_tokens=1))
    s.add(req("b", max_tokens=5))
    s.add(req("c", max_tokens=5))
    assert step(s, {}) == ["a"]
    assert [seq.request_id for seq in s.waiting] == ["c"]
    s.admit()
    assert {seq.request_id for seq in s.running} == {"b", "c"}


def test_context_length_is_checked_at_add() -> None:
    s = make(n_ctx=16)
    with pytest.raises(ContextLengthError) as exc:
        s.add(req("a", n_prompt=10, max_tokens=10))
    assert "maximum context length is 16 tokens" in str(exc.value)
    assert "20 tokens" in str(exc.value)
    with pytest.raises(ContextLengthError):
        s.add(req("b", n_prompt=16, max_tokens=None))
    with pytest.raises(RequestError):
        s.add(GenerationRequest("c", [], SamplingParams()))


def test_generation_without_max_tokens_stops_at_the_context_window() -> None:
    s = make(n_ctx=8)
    seq = s.add(req("a", n_prompt=5, max_tokens=None))
    finished: list[str] = []
    while not finished:
        finished = step(s, {})
    assert seq.finish_reason is FinishReason.LENGTH
    assert len(seq.tokens) == 8


def test_full_wait_queue_is_rejected() -> None:
    s = make(n_slots=1, max_waiting=1)
    s.add(req("a"))
    s.admit()
    s.add(req("b"))
    with pytest.raises(EngineOverloadedError):
        s.add(req("c"))


def test_abort_frees_the_slot_for_the_next_step() -> None:
    s = make(n_slots=1)
    s.add(req("a"))
    s.add(req("b"))
    step(s, {})
    s.finish("a", FinishReason.ABORT)
    s.admit()
    assert [seq.request_id for seq in s.running] == ["b"]
    s.finish("b", FinishReason.ABORT)
    assert not s.has_work


def test_abort_during_a_step_is_ignored_by_the_update() -> None:
    s = make()
    s.add(req("a"))
    s.admit()
    s.schedule()
    seq = s.finish("a", FinishReason.ABORT)
    assert s.update_from_output({"a": [5]}, is_eog) == []
    assert seq is not None and seq.status is SequenceStatus.FINISHED


def test_shared_prefix_is_reused_from_a_free_slot() -> None:
    s = make(n_slots=2)
    s.add(GenerationRequest("a", [1, 2, 3, 4, 5, 6], SamplingParams(max_tokens=1)))
    step(s, {})
    s.add(GenerationRequest("b", [1, 2, 3, 4, 9, 9, 9], SamplingParams(max_tokens=1)))
    admitted = s.admit()
    assert admitted[0].keep == 4
    out = s.schedule()
    assert out.chunks[0].start_pos == 4 and out.chunks[0].tokens == [9, 9, 9]
    seq = s.get("b")
    assert seq is not None and seq.cached_tokens == 4


def test_identical_prompt_still_computes_its_last_token() -> None:
    s = make(n_slots=1)
    s.add(GenerationRequest("a", [1, 2, 3], SamplingParams(max_tokens=1)))
    step(s, {})
    s.add(GenerationRequest("b", [1, 2, 3], SamplingParams(max_tokens=1)))
    assert s.admit()[0].keep == 2
    assert s.schedule().chunks[0].tokens == [3]


def test_lost_prefix_recomputes_from_zero() -> None:
    s = make(n_slots=1)
    s.add(GenerationRequest("a", [1, 2, 3, 4], SamplingParams(max_tokens=1)))
    step(s, {})
    s.add(GenerationRequest("b", [1, 2, 3, 4, 5], SamplingParams(max_tokens=1)))
    s.admit()
    s.prefix_lost("b")
    chunk = s.schedule().chunks[0]
    assert chunk.start_pos == 0 and chunk.tokens == [1, 2, 3, 4, 5]


def test_repr_shows_counts_not_tokens() -> None:
    r = GenerationRequest("a", [123456, 654321], SamplingParams())
    assert "123456" not in repr(r) and "prompt_tokens=2" in repr(r)

"""How steps cut into llama.cpp micro-batches, and slot choice that keeps the cut small after busy waves."""

from __future__ import annotations

import random
from collections.abc import Iterable

from llmhost.engine import kv
from llmhost.engine.layout import micro_batches
from llmhost.engine.scheduler import Scheduler
from llmhost.engine.types import GenerationRequest, SamplingParams

EOS = 2


def count_runs(slots: Iterable[int]) -> int:
    """How many runs of consecutive numbers ``slots`` makes (the passes a decode-only step costs)."""
    return len(micro_batches([(slot, 1) for slot in set(slots)], 512))


def test_decode_tokens_of_consecutive_slots_are_one_pass() -> None:
    assert micro_batches([(s, 1) for s in range(8)], 512) == [(tuple(range(8)), 1)]


def test_scattered_slots_cost_one_pass_per_run() -> None:
    passes = micro_batches([(s, 1) for s in range(0, 32, 4)], 512)
    assert passes == [((s,), 1) for s in range(0, 32, 4)]
    assert count_runs(range(0, 32, 4)) == 8
    assert len(micro_batches([(s, 1) for s in (0, 1, 2, 3, 20, 21, 22, 23)], 512)) == 2


def test_a_prompt_chunk_next_to_decode_tokens_adds_a_pass_for_its_rest() -> None:
    assert micro_batches([(0, 1), (1, 1), (2, 40)], 512) == [((0, 1, 2), 1), ((2,), 39)]


def test_equal_prompt_chunks_of_consecutive_slots_share_a_pass() -> None:
    assert micro_batches([(4, 60), (5, 60), (6, 60)], 512) == [((4, 5, 6), 60)]
    # Unequal ones: the shortest sets the pass, the rest follow.
    assert micro_batches([(4, 60), (5, 64)], 512) == [((4, 5), 60), ((5,), 4)]


def test_a_pass_holds_at_most_n_ubatch_tokens() -> None:
    assert micro_batches([(0, 300), (1, 300)], 512) == [((0, 1), 256), ((0, 1), 44)]


def _request(i: int, max_tokens: int) -> GenerationRequest:
    # Chat prompts share their first few tokens (BOS and the template's header), nothing more.
    prompt = [1, 105, 2364, 107] + [300 + (i * 31 + k * 7) % 5000 for k in range(20 + i % 9)]
    return GenerationRequest(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def _wave(s: Scheduler, first: int, n: int, rng: random.Random, runs: list[int]) -> None:
    """Run ``n`` requests with uneven lengths to completion (they finish out of order), noting the
    number of runs of busy slots at every decode-only step while all ``n`` are running."""
    for i in range(first, first + n):
        s.add(_request(i, rng.randint(8, 40)))
    while s.has_work:
        s.admit()
        out = s.schedule()
        if len(out.chunks) == n and all(len(c.tokens) == 1 for c in out.chunks):
            runs.append(count_runs(c.slot for c in out.chunks))
        s.update_from_output({c.request_id: [500] for c in out.chunks if c.sample}, lambda t: t == EOS)


def test_a_small_wave_after_busy_waves_decodes_in_one_pass_per_step() -> None:
    rng = random.Random(7)
    s = Scheduler(n_slots=32, n_ctx_slot=512, max_batch_tokens=512, max_waiting=64)
    first = 0
    for size in (32, 64, 8, 32, 64):
        _wave(s, first, size, rng, [])
        first += size
    runs: list[int] = []
    _wave(s, first, 8, rng, runs)
    # Before the fix the eight took the least recently used slots, scattered by the waves before: up to
    # eight passes a step, 0.67x the speed of the same wave on a fresh server. (Once some of them
    # finish, holes open inside the run, as they do on a fresh server.)
    assert runs and max(runs) == 1


def test_a_freed_slot_between_two_busy_ones_is_taken_first() -> None:
    table = kv.SlotTable(8)
    taken = [table.acquire([1, 2, 3])[0] for _ in range(5)]
    assert taken == [0, 1, 2, 3, 4]
    table.release(2, [1, 2, 3])
    table.release(4, [1, 2, 3])
    assert table.acquire([9, 9, 9])[0] == 2  # bridges 1 and 3; 4 or 5 would only extend


def test_a_long_cached_prefix_still_beats_adjacency() -> None:
    table = kv.SlotTable(8)
    long_prompt = list(range(10, 10 + kv.RUN_COST_TOKENS + 50))
    for _ in range(8):
        table.acquire([1])
    table.release(2, [1])  # between busy 1 and 3: taking it joins two runs
    table.release(6, long_prompt)  # next to busy 5
    table.release(7, [1])
    slot, reuse, _ = table.acquire([*long_prompt, 7, 8, 9])
    assert (slot, reuse) == (6, len(long_prompt))
    # A short shared prefix does not: the bridging slot wins.
    assert table.acquire([1, 5, 5])[0] == 2


def test_prompts_of_consecutive_slots_prefill_in_equal_chunks() -> None:
    s = Scheduler(n_slots=8, n_ctx_slot=512, max_batch_tokens=512, max_waiting=8)
    for i, n in enumerate((20, 24, 28, 32)):
        s.add(GenerationRequest(f"p{i}", [1] + [50 + i] * (n - 1), SamplingParams(max_tokens=4)))
    s.admit()
    out = s.schedule()
    assert [(c.slot, len(c.tokens), c.sample) for c in out.chunks] == [
        (0, 20, True),
        (1, 20, False),
        (2, 20, False),
        (3, 20, False),
    ]
    assert len(micro_batches(out.layout(), 512)) == 1


def test_a_wave_of_32_unequal_prompts_takes_one_pass_per_run_of_prompt_chunks_and_one_more() -> None:
    rng = random.Random(3)
    s = Scheduler(n_slots=32, n_ctx_slot=512, max_batch_tokens=512, max_waiting=64)
    for i in range(32):
        s.add(_request(i, 16))
    worst = 0
    while s.has_work:
        s.admit()
        out = s.schedule()
        # One pass per run of busy slots (decode tokens and the first token of every prompt chunk), one
        # for the rest of each run of consecutive prefilling slots, cut to equal lengths. Unequal cuts
        # took up to 18 passes in one step of this wave.
        runs = count_runs(c.slot for c in out.chunks)
        prompt_runs = count_runs(c.slot for c in out.chunks if len(c.tokens) > 1)
        assert len(micro_batches(out.layout(), 512)) <= runs + prompt_runs
        worst = max(worst, len(micro_batches(out.layout(), 512)))
        s.update_from_output(
            {c.request_id: [500 + rng.randint(0, 9)] for c in out.chunks if c.sample}, lambda t: t == EOS
        )
    assert worst <= 4

"""The batched engine on a real (tiny) llama.cpp model: batching, determinism, cancellation, reuse."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmhost.engine.async_engine import Engine
from llmhost.engine.runner import LlamaRunner, RunnerConfig
from llmhost.engine.types import FinishReason, GenerationRequest, RequestOutput, SamplingParams
from llmhost.errors import ContextLengthError, EngineOverloadedError

EOS = 2


def make_engine(path: Path, n_slots: int = 4, n_batch: int = 64, max_queue: int = 16) -> Engine:
    runner = LlamaRunner(path, RunnerConfig(n_ctx_slot=512, n_slots=n_slots, n_batch=n_batch, n_threads=1))
    engine = Engine(runner, max_queue=max_queue, name="tiny")
    engine.start()
    return engine


@pytest.fixture
def engine(tiny_model_path: Path) -> Iterator[Engine]:
    eng = make_engine(tiny_model_path)
    yield eng
    eng.stop()


def prompt(i: int, n: int = 12) -> list[int]:
    return [1] + [3 + ((i * 7 + k * 13) % 250) for k in range(n)]


def params(**kw: object) -> SamplingParams:
    base: dict[str, object] = {"max_tokens": 16, "temperature": 0.0, "logit_bias": {EOS: -100.0}}
    base.update(kw)
    return SamplingParams(**base)  # type: ignore[arg-type]


def run_one(
    engine: Engine, rid: str, tokens: list[int], p: SamplingParams
) -> tuple[list[int], RequestOutput]:
    ids: list[int] = []
    last: RequestOutput | None = None
    for out in engine.generate_sync(GenerationRequest(rid, tokens, p)):
        assert out.error is None
        ids.extend(out.token_ids)
        last = out
    assert last is not None
    return ids, last


def run_many(engine: Engine, reqs: list[tuple[str, list[int], SamplingParams]]) -> dict[str, list[int]]:
    results: dict[str, list[int]] = {}

    def worker(rid: str, tokens: list[int], p: SamplingParams) -> None:
        results[rid] = run_one(engine, rid, tokens, p)[0]

    threads = [threading.Thread(target=worker, args=r) for r in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_greedy_output_is_the_same_alone_and_in_a_busy_batch(engine: Engine) -> None:
    alone = {f"r{i}": run_one(engine, f"alone{i}", prompt(i), params())[0] for i in range(4)}
    batched = run_many(engine, [(f"r{i}", prompt(i), params()) for i in range(4)])
    assert batched == alone
    assert all(len(v) == 16 for v in alone.values())


# Both samplers that take a seed: llama.cpp's chain (any logit bias selects it) and the numpy draw of the
# plain-temperature fast path (no bias; the end-of-sequence token may then end a sample early).
SAMPLERS = pytest.mark.parametrize("bias", [{EOS: -100.0}, {}], ids=["chain", "draw"])


@SAMPLERS
def test_seeded_sampling_is_the_same_alone_and_in_a_busy_batch(
    engine: Engine, bias: dict[int, float]
) -> None:
    p = params(temperature=1.0, seed=42, max_tokens=32, logit_bias=bias)
    alone = run_one(engine, "alone", prompt(1), p)[0]
    assert len(alone) >= 8  # a sample long enough to tell seeds apart
    others = [(f"o{i}", prompt(i + 10), params(temperature=1.0, logit_bias=bias)) for i in range(3)]
    batched = run_many(engine, [("seeded", prompt(1), p), *others])
    assert batched["seeded"] == alone


@SAMPLERS
def test_other_seeds_give_other_samples(engine: Engine, bias: dict[int, float]) -> None:
    """The tiny model's next-token distribution at temperature 1 is close to uniform over 265 tokens,
    so two seeds agreeing on a 32-token sample would be an astronomical coincidence: a sampler that
    drops the seed (or replaces it with a constant) fails here."""
    samples = [
        tuple(
            run_one(
                engine,
                f"s{seed}",
                prompt(1),
                params(temperature=1.0, seed=seed, max_tokens=32, logit_bias=bias),
            )[0]
        )
        for seed in (1, 2, 3, 42)
    ]
    assert len(set(samples)) == 4, samples


def test_more_requests_than_slots_all_complete(engine: Engine) -> None:
    results = run_many(engine, [(f"r{i}", prompt(i), params(max_tokens=8)) for i in range(10)])
    assert len(results) == 10 and all(len(v) == 8 for v in results.values())
    assert engine.busy_slots == 0 and engine.waiting == 0


def test_long_prompt_is_prefilled_in_chunks(engine: Engine) -> None:
    long_prompt = prompt(3, n=300)  # > n_batch (64): several prefill steps
    steps_before = engine.steps
    ids, last = run_one(engine, "long", long_prompt, params(max_tokens=4))
    assert len(ids) == 4 and last.prompt_tokens == 301
    assert engine.steps - steps_before >= 300 // 64 + 3


def test_prefix_is_reused_and_output_unchanged(engine: Engine) -> None:
    shared = prompt(5, n=200)
    first_ids, first = run_one(engine, "first", [*shared, 40, 41], params(max_tokens=6))
    assert first.cached_tokens == 0
    again_ids, again = run_one(engine, "again", [*shared, 40, 41], params(max_tokens=6))
    assert again.cached_tokens == 202  # all but the last prompt token
    assert again_ids == first_ids
    _, other = run_one(engine, "other", [*shared, 50, 51, 52], params(max_tokens=6))
    assert other.cached_tokens == 201


def test_abort_frees_the_slot_within_a_step(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path, n_slots=1)
    try:
        gen = engine.generate_sync(GenerationRequest("long", prompt(1), params(max_tokens=400)))
        next(gen)
        gen.close()  # the consumer leaves: the request is aborted
        deadline = time.monotonic() + 5
        while engine.busy_slots and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.busy_slots == 0
        ids, last = run_one(engine, "next", prompt(2), params(max_tokens=3))
        assert len(ids) == 3 and last.finish_reason is FinishReason.LENGTH
    finally:
        engine.stop()


def test_async_stream_cancel_aborts(engine: Engine) -> None:
    async def go() -> None:
        stream = engine.stream(GenerationRequest("a", prompt(1), params(max_tokens=400)))
        async for _ in stream:
            break
        stream.cancel()

    asyncio.run(go())
    deadline = time.monotonic() + 5
    while engine.busy_slots and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.busy_slots == 0


def test_full_queue_raises_overloaded(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path, n_slots=1, max_queue=1)
    try:
        gens = [
            engine.generate_sync(GenerationRequest(f"r{i}", prompt(i), params(max_tokens=200)))
            for i in range(2)
        ]
        next(gens[0])  # r0 running
        engine.submit(GenerationRequest("r1", prompt(1), params()), lambda out: None)  # r1 waits
        with pytest.raises(EngineOverloadedError):
            engine.submit(GenerationRequest("r2", prompt(2), params()), lambda out: None)
        for g in gens:
            g.close()
    finally:
        engine.stop()


def test_prompt_too_long_raises_context_length(engine: Engine) -> None:
    with pytest.raises(ContextLengthError) as exc:
        engine.submit(GenerationRequest("big", prompt(1, n=600), params()), lambda out: None)
    assert exc.value.allowed == 512


def test_stop_unloads_cleanly_with_requests_in_flight(tiny_model_path: Path) -> None:
    """A request that is generating when the engine stops ends with ``abort`` at the next step (it is
    neither left open nor run to its end). The sink holds the engine thread at the first token until
    ``stop`` has been asked for, so the order is fixed whatever the machine's load."""
    engine = make_engine(tiny_model_path)
    outs: list[RequestOutput] = []
    generating, release = threading.Event(), threading.Event()

    def sink(out: RequestOutput) -> None:
        outs.append(out)
        if not generating.is_set():
            generating.set()
            release.wait(30)

    engine.submit(GenerationRequest("x", prompt(1), params(max_tokens=400)), sink)
    assert generating.wait(30), "no token within 30 s"
    stopper = threading.Thread(target=engine.stop)
    stopper.start()
    with engine._cv:  # stop() sets the flag under this condition and notifies it
        assert engine._cv.wait_for(lambda: engine._stopping, 30)
    release.set()
    stopper.join(30)
    assert not stopper.is_alive()
    # The output held at: its token(s), no finish; then at once the abort, with nothing generated since.
    assert [(bool(o.token_ids), o.finish_reason) for o in outs] == [(True, None), (False, FinishReason.ABORT)]


def test_runner_fills_a_batch_in_slot_order_whatever_order_the_scheduler_gives(tiny_model_path: Path) -> None:
    # llama.cpp packs a batch into one micro-batch only when its sequence ids come in order (per-sequence
    # KV cache); out of order it splits the step and reads the weights once per piece.
    from llmhost.engine.types import ScheduledChunk, SchedulerOutput

    runner = LlamaRunner(tiny_model_path, RunnerConfig(n_ctx_slot=128, n_slots=4, n_batch=64, n_threads=1))
    try:
        slots = [3, 1, 2, 0]
        for slot in slots:
            assert runner.start_sequence(slot, 0, params())
        chunks = [ScheduledChunk(f"r{slot}", slot, prompt(slot, 4), 0, True) for slot in slots]
        sampled = runner.step(SchedulerOutput(chunks))
        n = runner._batch.n_tokens
        assert [runner._seq_ptrs[i][0] for i in range(n)] == sorted(runner._seq_ptrs[i][0] for i in range(n))
        assert set(sampled) == {"r0", "r1", "r2", "r3"}
    finally:
        runner.close()


def test_a_failure_after_a_step_fails_its_requests_and_the_loop_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine.scheduler.update_from_output
    calls = {"n": 0}

    def broken(*args: object, **kw: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug after the decode call")
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(engine.scheduler, "update_from_output", broken)
    outs = list(engine.generate_sync(GenerationRequest("bad", prompt(1), params())))
    assert outs[-1].error is not None and "a bug after the decode call" in str(outs[-1].error)
    ids, last = run_one(engine, "good", prompt(2), params())
    assert len(ids) == 16 and last.finish_reason is FinishReason.LENGTH

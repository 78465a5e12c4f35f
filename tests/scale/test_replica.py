"""A model replica's engine without Ray: batching of stream deltas, errors carried as values, and a
stream resumed from the text another replica had already sent."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmhost.config import RaySettings, Settings
from llmhost.core.types import (
    ChatMessage,
    Delta,
    InferenceRequest,
    ResponseFormat,
    Sampling,
    Tool,
    Usage,
)
from llmhost.errors import ContextLengthError, EngineError, ModelNotFoundError, RequestError, classify
from llmhost.models.default import DEFAULT_MODEL_NAME
from llmhost.scale.replica import Failure, ReplicaEngine, ReplicaTag, batched, replica_settings, resumable
from tests.conftest import TINY, make_settings

pytestmark = pytest.mark.anyio

TAG = ReplicaTag("r1", "SERVE_REPLICA::llmhost#ModelReplica#r1", 1)


def chat(model: str, text: str, max_tokens: int, **sampling: object) -> InferenceRequest:
    return InferenceRequest(
        "chat",
        model,
        messages=(ChatMessage("user", text),),
        sampling=Sampling(max_tokens=max_tokens, temperature=0.0, **sampling),  # type: ignore[arg-type]
    )


async def collect(items: AsyncIterator[object]) -> list[object]:
    return [item async for item in items]


def deltas_of(items: list[object]) -> list[Delta]:
    assert items[0] == TAG, "every stream starts with the replica's tag"
    return [d for batch in items[1:] for d in batch]  # type: ignore[attr-defined]


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas if d.index == 0)


# ----- settings --------------------------------------------------------------------------------------
def test_ray_settings_refuse_a_maximum_below_the_minimum() -> None:
    with pytest.raises(ValidationError, match="max_replicas"):
        RaySettings(replicas=3, max_replicas=2)
    assert RaySettings(replicas=2, max_replicas=4).autoscales
    assert not RaySettings(replicas=2, max_replicas=2).autoscales


def test_a_replica_decodes_with_its_reserved_cpus_and_keeps_its_models(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, engine={"n_threads": None})
    tuned = replica_settings(settings, RaySettings(replica_cpus=1.5))
    assert tuned.engine.n_threads == 2
    assert tuned.memory.keep_alive == -1.0  # Serve's multiplexing decides what a replica holds
    pinned = replica_settings(make_settings(tmp_path, engine={"n_threads": 3}), RaySettings())
    assert pinned.engine.n_threads == 3


# ----- errors as values ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "error",
    [
        ModelNotFoundError("gone:1b"),
        ContextLengthError(5000, 4096, 4000, 1000),
        RequestError("n=99 is more than this model's 4 parallel sequences", param="n"),
    ],
    ids=["not-found", "context-length", "request"],
)
def test_a_replica_error_arrives_as_the_same_error(error: Exception) -> None:
    failure = pickle.loads(pickle.dumps(Failure.of(error)))  # type: ignore[arg-type]
    again = failure.error()
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert classify(again) == classify(error)


# ----- batching --------------------------------------------------------------------------------------
async def numbered(n: int, pause: float, fail: bool = False) -> AsyncIterator[Delta]:
    for i in range(n):
        await asyncio.sleep(pause)
        yield Delta(0, str(i))
    if fail:
        raise EngineError("the engine stopped")


async def test_batches_send_the_first_delta_alone_and_lose_none() -> None:
    batches = [b async for b in batched(numbered(20, 0.002), 0.03)]
    assert len(batches[0]) == 1
    assert len(batches) < 20  # later ones were gathered
    assert "".join(d.text for b in batches for d in b) == "".join(str(i) for i in range(20))


async def test_batches_end_with_the_streams_error_after_its_deltas() -> None:
    seen: list[str] = []
    with pytest.raises(EngineError, match="stopped"):
        async for batch in batched(numbered(5, 0.0, fail=True), 0.01):
            seen += [d.text for d in batch]
    assert seen == ["0", "1", "2", "3", "4"]


async def test_leaving_a_batched_stream_closes_its_source() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[Delta]:
        try:
            while True:
                await asyncio.sleep(0.001)
                yield Delta(0, "x")
        finally:
            closed.set()

    stream = batched(endless(), 0.01)
    await anext(stream)
    await stream.aclose()
    await asyncio.wait_for(closed.wait(), 1)


def test_only_free_text_of_one_choice_resumes() -> None:
    plain = chat(TINY, "hi", 8)
    assert resumable(plain)
    assert not resumable(chat(TINY, "hi", 8, n=2))
    assert not resumable(InferenceRequest("chat", TINY, tools=(Tool("f"),)))
    assert not resumable(InferenceRequest("chat", TINY, response_format=ResponseFormat("json")))


# ----- the engine, on the tiny model -----------------------------------------------------------------
@pytest.fixture
def tiny_engine(settings: Settings, tiny_model_path: Path) -> Iterator[ReplicaEngine]:
    engine = ReplicaEngine(settings, TAG, stream_interval=0.0)
    engine.store.import_file(tiny_model_path, TINY)
    yield engine
    engine.close()


async def test_a_replica_answers_and_streams_with_its_tag(tiny_engine: ReplicaEngine) -> None:
    await tiny_engine.load(TINY)
    tag, result = await tiny_engine.answer(chat(TINY, "hello", 6))
    assert tag == TAG and result.usage.completion_tokens == 6
    deltas = deltas_of(await collect(tiny_engine.stream(chat(TINY, "hello", 6))))
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 6


async def test_a_model_serve_evicts_is_unloaded_once_its_requests_end(tiny_engine: ReplicaEngine) -> None:
    held = await tiny_engine.load(TINY)
    in_use = tiny_engine.models.acquire(TINY)  # as a request under way holds it
    held.__del__()  # what Serve's multiplexing calls when it evicts the model
    await asyncio.sleep(0.7)
    assert [m.name for m in tiny_engine.models.loaded()] == [TINY], "kept while it serves"
    tiny_engine.models.release(in_use)
    for _ in range(100):
        if not tiny_engine.models.loaded():
            break
        await asyncio.sleep(0.05)
    assert tiny_engine.models.loaded() == []


async def test_a_finished_stream_resumes_with_its_usage_only(tiny_engine: ReplicaEngine) -> None:
    deltas = deltas_of(await collect(tiny_engine.resume(chat(TINY, "hello", 6), "the hello", True)))
    assert len(deltas) == 1 and deltas[0].usage is not None
    assert deltas[0].usage.completion_tokens >= 1


async def test_a_stream_that_used_its_tokens_resumes_with_its_finish(tiny_engine: ReplicaEngine) -> None:
    deltas = deltas_of(await collect(tiny_engine.resume(chat(TINY, "hello", 2), "the hello the", False)))
    assert [d.finish_reason for d in deltas if d.index == 0] == ["length"]
    usage = deltas[-1].usage
    assert usage is not None and usage.completion_tokens >= 2 and usage.prompt_tokens > 0


async def test_a_resumed_stream_keeps_its_context_and_sends_its_tokens(tiny_engine: ReplicaEngine) -> None:
    # Ollama's `context`: token ids of earlier turns in front of the prompt, the whole sequence back.
    request = dataclasses.replace(chat(TINY, "hello", 6), prefix_tokens=(1, 5, 6), want_tokens=True)
    whole = deltas_of(await collect(tiny_engine.stream(request)))
    [finish] = [d for d in whole if d.finish_reason is not None]
    usage = whole[-1].usage
    assert usage is not None and finish.tokens is not None
    assert finish.tokens[:3] == (1, 5, 6) and finish.tokens[3] != 1  # the chat's own BOS left out
    assert len(finish.tokens) == usage.prompt_tokens + usage.completion_tokens
    rest = deltas_of(await collect(tiny_engine.resume(request, "the", False)))
    [again] = [d for d in rest if d.finish_reason is not None]
    assert (
        again.tokens is not None
        and again.tokens[: usage.prompt_tokens] == finish.tokens[: usage.prompt_tokens]
    )
    assert rest[-1].usage is not None and rest[-1].usage.prompt_tokens == usage.prompt_tokens


async def test_a_stream_with_tools_is_not_resumed(tiny_engine: ReplicaEngine) -> None:
    request = InferenceRequest("chat", TINY, messages=(ChatMessage("user", "hi"),), tools=(Tool("f"),))
    with pytest.raises(EngineError, match="free-text"):
        await collect(tiny_engine.resume(request, "par", False))


# ----- the engine, on the embedded model -------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaEngine]:
    from llmhost.models.default import ensure_default_model

    settings = make_settings(
        tmp_path_factory.mktemp("replica-gemma"),
        default_model=DEFAULT_MODEL_NAME,
        engine={"n_ctx": 1024, "n_parallel": 2, "n_batch": 256},
    )
    engine = ReplicaEngine(settings, TAG, stream_interval=0.0)
    ensure_default_model(engine.store, engine.registry, DEFAULT_MODEL_NAME)
    yield engine
    engine.close()


@pytest.mark.gemma
@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_a_resumed_greedy_stream_continues_as_the_unbroken_one(
    gemma_engine: ReplicaEngine, kind: str
) -> None:
    if kind == "chat":
        request = chat(DEFAULT_MODEL_NAME, "Name three colours of the rainbow.", 32, ignore_eos=True)
    else:
        request = InferenceRequest(
            "completion",
            DEFAULT_MODEL_NAME,
            prompt="The three largest cities of France are",
            sampling=Sampling(max_tokens=32, temperature=0.0, ignore_eos=True),
        )
    whole = deltas_of(await collect(gemma_engine.stream(request)))
    texts = [d.text for d in whole if d.index == 0 and d.text]
    sent = "".join(texts[: len(texts) // 2])  # the replica died half way through
    rest = deltas_of(await collect(gemma_engine.resume(request, sent, False)))
    assert sent + text_of(rest) == text_of(whole)
    assert rest[-2].finish_reason == "length"
    final = rest[-1].usage
    assert final is not None and final == Usage(whole[-1].usage.prompt_tokens, 32, final.cached_tokens)  # type: ignore[union-attr]

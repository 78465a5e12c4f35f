"""Resident models: several at once, LRU eviction under a budget and a count cap, keep-alive, refs,
forced unloads, hot-swap."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmhost.errors import ConflictError, ModelError, NotReadyError
from llmhost.models.gguf_check import inspect_gguf
from llmhost.models.memory import estimate_memory
from llmhost.service import Service
from tests.conftest import TINY, LiveServer, ServerFactory, make_settings
from tests.support import run_threads
from tests.tiny_gguf import write_tiny_llama_gguf

MakeService = Callable[..., Service]


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf2") / "tiny2.gguf", seed=7, name="tiny-two")


def tiny_estimate(path: Path) -> int:
    # Same runtime settings as make_settings: 4 slots x 512 tokens.
    return estimate_memory(inspect_gguf(path), n_ctx_total=4 * 512, n_seq=4).total_bytes


@pytest.fixture
def make_two(tmp_path: Path, tiny_model_path: Path, second_model: Path) -> Iterator[MakeService]:
    """``make_two(**settings_overrides)``: a service with two models registered, ``tiny`` and ``two``
    (different files); every service it made is closed at the end."""
    services: list[Service] = []

    def make(**overrides: object) -> Service:
        service = Service(make_settings(tmp_path / f"data-{len(services)}", **overrides))
        services.append(service)
        service.store.import_file(tiny_model_path, TINY)
        service.store.import_file(second_model, "two")
        return service

    yield make
    for service in reversed(services):
        service.close()


@pytest.fixture
def two_models(make_two: MakeService) -> Service:
    return make_two()


def names(service: Service) -> set[str]:
    return {m.name for m in service.models.loaded()}


def test_several_models_are_resident_at_once(two_models: Service) -> None:
    two_models.models.load(TINY)
    two_models.models.load("two")
    assert names(two_models) == {TINY, "two"}


def test_least_recently_used_idle_model_is_evicted_to_fit_the_budget(
    make_two: MakeService, tiny_model_path: Path
) -> None:
    budget = int(tiny_estimate(tiny_model_path) * 1.5)  # room for one tiny model, not two
    service = make_two(memory={"ram_budget": budget})
    service.models.load(TINY)
    service.models.load("two")
    assert names(service) == {"two"}
    service.models.load(TINY)
    assert names(service) == {TINY}


def test_a_model_serving_a_request_is_never_evicted(make_two: MakeService, tiny_model_path: Path) -> None:
    budget = int(tiny_estimate(tiny_model_path) * 1.5)
    service = make_two(memory={"ram_budget": budget})
    service.models.busy_wait_seconds = 0.3
    with service.models.hold(TINY):
        with pytest.raises(NotReadyError):
            service.models.load("two")
        assert names(service) == {TINY}
    service.models.load("two")  # idle now: evicted
    assert names(service) == {"two"}


def test_a_model_that_can_never_fit_is_refused_clearly(make_two: MakeService) -> None:
    service = make_two(memory={"ram_budget": 1000})
    with pytest.raises(ModelError, match="budget"):
        service.models.load(TINY)


def test_max_loaded_refuses_a_load_while_the_resident_models_all_serve(make_two: MakeService) -> None:
    """``memory.max_loaded`` caps the count whatever the memory: at the cap, a load waits for a resident
    model to turn idle, and is refused (503, retry) when none does in time; the busy one stays."""
    service = make_two(memory={"max_loaded": 1})  # memory: the default budget, room for both
    service.models.busy_wait_seconds = 0.3
    with service.models.hold(TINY):
        with pytest.raises(NotReadyError, match="retry later"):
            service.models.load("two")
        assert names(service) == {TINY}
    service.models.load("two")  # idle now: evicted to stay at one
    assert names(service) == {"two"}


def test_idle_model_unloads_after_keep_alive(make_two: MakeService) -> None:
    service = make_two(models={TINY: {"keep_alive": "0.2s"}})
    service.models.load(TINY)
    service.models.load("two")  # default keep_alive (5 min) stays
    deadline = time.monotonic() + 5
    while TINY in names(service) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert names(service) == {"two"}


def test_held_model_outlives_its_keep_alive(make_two: MakeService) -> None:
    service = make_two(models={TINY: {"keep_alive": 0}})
    with service.models.hold(TINY):
        time.sleep(1.2)  # two passes of the keep-alive reaper (every 0.5 s): it must leave a held model
        assert TINY in names(service)


def test_unload_of_a_busy_model_is_refused(two_models: Service) -> None:
    with two_models.models.hold(TINY), pytest.raises(ConflictError, match="serving"):
        two_models.models.unload(TINY)
    assert two_models.models.unload(TINY) is True
    assert two_models.models.unload(TINY) is False


def test_per_model_settings_shape_the_runtime(make_two: MakeService) -> None:
    service = make_two(models={"two": {"n_ctx": 256, "n_parallel": 2}})
    model = service.models.load("two")
    assert (model.runner.n_slots, model.runner.n_ctx_slot) == (2, 256)
    assert service.models.load(TINY).runner.n_slots == 4


# ----- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def live(two_models: Service, make_server: ServerFactory) -> LiveServer:
    return make_server(two_models)


def post(live: LiveServer, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{live.base_url}{path}", json=body, timeout=60)


def ps(live: LiveServer) -> list[dict[str, Any]]:
    models: list[dict[str, Any]] = httpx.get(f"{live.base_url}/api/ps", timeout=30).json()["models"]
    return models


def test_api_ps_load_and_unload(live: LiveServer) -> None:
    loaded = ps(live)
    assert [m["name"] for m in loaded] == [TINY]  # the default model, preloaded
    assert loaded[0]["slots"] == 4 and loaded[0]["slots_busy"] == 0 and loaded[0]["size"] > 0
    r = post(live, "/api/load", {"model": "two"})
    assert r.status_code == 200 and r.json()["status"] == "loaded"
    assert {m["name"] for m in ps(live)} == {TINY, "two"}
    assert post(live, "/api/unload", {"model": "two"}).json()["status"] == "unloaded"
    r = post(live, "/api/unload", {"model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_a_forced_unload_takes_out_a_model_that_is_serving(live: LiveServer, two_models: Service) -> None:
    """``POST /api/unload`` refuses a busy model (409 ``conflict``) and unloads it with ``force``: gone
    from ``/api/ps`` at once, and the next request loads it again."""
    with two_models.models.hold(TINY) as held:  # a request holds the model
        refused = post(live, "/api/unload", {"model": TINY})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
        assert [m["name"] for m in ps(live)] == [TINY]
        forced = post(live, "/api/unload", {"model": TINY, "force": True})
        assert forced.status_code == 200 and forced.json() == {"status": "unloaded", "model": TINY}
        assert ps(live) == []
        assert two_models.models.get_loaded(TINY) is None
    again = post(live, "/v1/completions", {"model": TINY, "prompt": "hi", "max_tokens": 2})
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 2
    reloaded = two_models.models.get_loaded(TINY)
    assert reloaded is not None and reloaded is not held


def test_max_loaded_evicts_the_least_recently_used_model(
    make_two: MakeService, make_server: ServerFactory
) -> None:
    """At ``memory.max_loaded`` (2 here, memory to spare) a third load evicts the idle model used least
    recently, not the one loaded first. "three" is ``tiny``'s file with other runtime settings, so it
    is a resident model of its own."""
    service = make_two(memory={"max_loaded": 2}, models={"three": {"n_ctx": 256}})
    live = make_server(service)  # preloads the default model, tiny
    assert post(live, "/api/copy", {"source": TINY, "destination": "three"}).status_code == 200
    assert post(live, "/api/load", {"model": "two"}).status_code == 200
    assert {m["name"] for m in ps(live)} == {TINY, "two"}
    used = post(live, "/v1/completions", {"model": TINY, "prompt": "hi", "max_tokens": 2})
    assert used.status_code == 200  # tiny, loaded first, is now the one used last
    assert post(live, "/api/load", {"model": "three"}).status_code == 200
    assert {m["name"] for m in ps(live)} == {TINY, "three"}


def test_alias_hot_swap_under_load_fails_no_request(live: LiveServer, two_models: Service) -> None:
    """Re-pointing an alias (``POST /api/copy``, as Ollama's API) while four clients stream through it
    fails no stream; streams done before the swap ran on the old file, those begun after it on the new
    one, and every stream is accounted for on one of the two (those in between may run on either)."""
    max_tokens, workers = 40, 4
    assert post(live, "/api/copy", {"source": TINY, "destination": "prod"}).status_code == 200
    body = {
        "model": "prod",
        "prompt": "hi",
        "max_tokens": max_tokens,
        "stream": True,
        "logit_bias": {"2": -100},
    }
    progress = threading.Condition()
    done = [0] * workers  # streams each worker completed
    before = [0] * workers  # of them, finished before the swap was asked for: on the old file
    after = [0] * workers  # of them, begun once the swap had answered: on the new file
    swapping, swapped, stop = threading.Event(), threading.Event(), threading.Event()

    def stream(worker: int) -> None:
        try:
            while not stop.is_set():
                began_after = swapped.is_set()
                with httpx.stream("POST", f"{live.base_url}/v1/completions", json=body, timeout=60) as r:
                    assert r.status_code == 200, r.read()
                    events = [
                        line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")
                    ]
                assert events[-1] == "[DONE]", events[-3:]
                assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length", events[-3:]
                with progress:
                    done[worker] += 1
                    before[worker] += not swapping.is_set()
                    after[worker] += began_after
                    progress.notify_all()
        except BaseException:  # any failure at all: stop everyone; run_threads re-raises it
            with progress:
                stop.set()
                progress.notify_all()
            raise

    def swap() -> None:
        try:
            with progress:
                progress.wait_for(lambda: stop.is_set() or all(done), timeout=60)
                assert all(done), f"not every client completed a stream before the swap: {done}"
            swapping.set()
            assert post(live, "/api/copy", {"source": "two", "destination": "prod"}).status_code == 200
            swapped.set()
            with progress:
                progress.wait_for(lambda: stop.is_set() or all(after), timeout=60)
                assert all(after), f"not every client completed a stream after the swap: {after}"
        finally:
            with progress:
                stop.set()
                progress.notify_all()

    jobs: list[Callable[[], None]] = [functools.partial(stream, w) for w in range(workers)]
    run_threads(lambda job: job(), [(job,) for job in [*jobs, swap]])  # re-raises any thread's error
    assert all(before) and all(after), (before, after)  # every client streamed on both sides of the swap

    old, new = two_models.models.get_loaded(TINY), two_models.models.get_loaded("two")
    assert old is not None and new is not None, "the alias does not run the new file"
    old_tokens = old.engine.stats_snapshot().generation_tokens
    new_tokens = new.engine.stats_snapshot().generation_tokens
    assert old_tokens + new_tokens == max_tokens * sum(done)  # every stream ran on one of the two files
    assert old_tokens >= max_tokens * sum(before)
    assert new_tokens >= max_tokens * sum(after) > 0

"""Resident models: several at once, LRU eviction under a budget, keep-alive, refs, hot-swap."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmhost.errors import ConflictError, ModelError, NotReadyError
from llmhost.models.gguf_check import inspect_gguf
from llmhost.models.memory import estimate_memory
from llmhost.service import Service
from tests.conftest import TINY, LiveServer, make_settings, start_server
from tests.tiny_gguf import write_tiny_llama_gguf


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf2") / "tiny2.gguf", seed=7, name="tiny-two")


def tiny_estimate(path: Path) -> int:
    # Same runtime settings as make_settings: 4 slots x 512 tokens.
    return estimate_memory(inspect_gguf(path), n_ctx_total=4 * 512, n_seq=4).total_bytes


def make(tmp_path: Path, tiny: Path, second: Path, **overrides: object) -> Service:
    service = Service(make_settings(tmp_path / "data", **overrides))
    service.store.import_file(tiny, TINY)
    service.store.import_file(second, "two")
    return service


@pytest.fixture
def two_models(tmp_path: Path, tiny_model_path: Path, second_model: Path) -> Iterator[Service]:
    service = make(tmp_path, tiny_model_path, second_model)
    yield service
    service.close()


def names(service: Service) -> set[str]:
    return {m.name for m in service.models.loaded()}


def test_several_models_are_resident_at_once(two_models: Service) -> None:
    two_models.models.load(TINY)
    two_models.models.load("two")
    assert names(two_models) == {TINY, "two"}


def test_least_recently_used_idle_model_is_evicted_to_fit_the_budget(
    tmp_path: Path, tiny_model_path: Path, second_model: Path
) -> None:
    budget = int(tiny_estimate(tiny_model_path) * 1.5)  # room for one tiny model, not two
    service = make(tmp_path, tiny_model_path, second_model, memory={"ram_budget": budget})
    try:
        service.models.load(TINY)
        service.models.load("two")
        assert names(service) == {"two"}
        service.models.load(TINY)
        assert names(service) == {TINY}
    finally:
        service.close()


def test_a_model_serving_a_request_is_never_evicted(
    tmp_path: Path, tiny_model_path: Path, second_model: Path
) -> None:
    budget = int(tiny_estimate(tiny_model_path) * 1.5)
    service = make(tmp_path, tiny_model_path, second_model, memory={"ram_budget": budget})
    service.models.busy_wait_seconds = 0.3
    try:
        with service.models.hold(TINY):
            with pytest.raises(NotReadyError):
                service.models.load("two")
            assert names(service) == {TINY}
        service.models.load("two")  # idle now: evicted
        assert names(service) == {"two"}
    finally:
        service.close()


def test_a_model_that_can_never_fit_is_refused_clearly(
    tmp_path: Path, tiny_model_path: Path, second_model: Path
) -> None:
    service = make(tmp_path, tiny_model_path, second_model, memory={"ram_budget": 1000})
    try:
        with pytest.raises(ModelError, match="budget"):
            service.models.load(TINY)
    finally:
        service.close()


def test_idle_model_unloads_after_keep_alive(
    tmp_path: Path, tiny_model_path: Path, second_model: Path
) -> None:
    service = make(tmp_path, tiny_model_path, second_model, models={TINY: {"keep_alive": "0.2s"}})
    try:
        service.models.load(TINY)
        service.models.load("two")  # default keep_alive (5 min) stays
        deadline = time.monotonic() + 5
        while TINY in names(service) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert names(service) == {"two"}
    finally:
        service.close()


def test_held_model_outlives_its_keep_alive(
    tmp_path: Path, tiny_model_path: Path, second_model: Path
) -> None:
    service = make(tmp_path, tiny_model_path, second_model, models={TINY: {"keep_alive": 0}})
    try:
        with service.models.hold(TINY):
            time.sleep(1.2)
            assert TINY in names(service)
    finally:
        service.close()


def test_unload_of_a_busy_model_is_refused(two_models: Service) -> None:
    with two_models.models.hold(TINY), pytest.raises(ConflictError, match="serving"):
        two_models.models.unload(TINY)
    assert two_models.models.unload(TINY) is True
    assert two_models.models.unload(TINY) is False


def test_per_model_settings_shape_the_runtime(
    tmp_path: Path, tiny_model_path: Path, second_model: Path
) -> None:
    service = make(tmp_path, tiny_model_path, second_model, models={"two": {"n_ctx": 256, "n_parallel": 2}})
    try:
        model = service.models.load("two")
        assert (model.runner.n_slots, model.runner.n_ctx_slot) == (2, 256)
        assert service.models.load(TINY).runner.n_slots == 4
    finally:
        service.close()


# ----- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def live(two_models: Service) -> Iterator[LiveServer]:
    server = start_server(two_models.settings, two_models)
    yield server
    server.stop()


def test_api_ps_load_and_unload(live: LiveServer) -> None:
    base = live.base_url
    ps = httpx.get(f"{base}/api/ps").json()["models"]
    assert [m["name"] for m in ps] == [TINY]  # the default model, preloaded
    assert ps[0]["slots"] == 4 and ps[0]["slots_busy"] == 0 and ps[0]["size"] > 0
    r = httpx.post(f"{base}/api/load", json={"model": "two"}, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "loaded"
    assert {m["name"] for m in httpx.get(f"{base}/api/ps").json()["models"]} == {TINY, "two"}
    assert httpx.post(f"{base}/api/unload", json={"model": "two"}).json()["status"] == "unloaded"
    r = httpx.post(f"{base}/api/unload", json={"model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_alias_hot_swap_under_load_fails_no_request(live: LiveServer, two_models: Service) -> None:
    base = live.base_url
    registry = two_models.registry
    registry.put(dataclasses.replace(registry.get(TINY), name="prod", created_at=dt.datetime.now(dt.UTC)))
    failures: list[str] = []
    digests_seen: set[str] = set()
    stop = threading.Event()

    def stream_forever() -> None:
        while not stop.is_set():
            body = {
                "model": "prod",
                "prompt": "hi",
                "max_tokens": 40,
                "stream": True,
                "logit_bias": {"2": -100},
            }
            try:
                with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=30) as r:
                    if r.status_code != 200:
                        failures.append(f"status {r.status_code}")
                        continue
                    lines = [line for line in r.iter_lines() if line.startswith("data: ")]
                    if lines[-1] != "data: [DONE]" or '"length"' not in lines[-2]:
                        failures.append("truncated stream")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=stream_forever) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    two = registry.get("two")
    registry.put(dataclasses.replace(two, name="prod", created_at=dt.datetime.now(dt.UTC)))  # swap
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(30)
    for m in httpx.get(f"{base}/api/ps").json()["models"]:
        digests_seen.add(m["digest"])
    assert failures == []
    assert two.digest in digests_seen  # the alias now runs the new file

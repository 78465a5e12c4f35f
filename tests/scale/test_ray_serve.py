"""llmhost as a Ray Serve application on a local Ray cluster: two replicas of the embedded model behind
llmhost's own HTTP app, and one of them killed while requests are in flight.

One cluster for the module (Ray and Serve take about 25 s to start on two cores).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'ray[serve]')")

import ray
from ray import serve

from llmhost.config import RaySettings
from llmhost.models.default import DEFAULT_MODEL_NAME
from llmhost.models.default_embedding import DEFAULT_EMBEDDING_MODEL_NAME
from llmhost.scale.provider import REPLICA_HEADER
from llmhost.scale.ray_serve import APP_NAME, SettingsSource, build_app, replica_options
from tests.support import free_port

# One worker runs the module, so `make test`'s workers do not each start a Ray cluster for it.
pytestmark = [pytest.mark.gemma, pytest.mark.xdist_group("ray")]
MODEL = DEFAULT_MODEL_NAME
SLOTS = 8


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serve's HTTP proxy in front of the application: the ingress and two model replicas (1 thread,
    8 slots each) on a local two-CPU Ray cluster."""
    home = tmp_path_factory.mktemp("ray-home")
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        # The Ray workers inherit this environment: none of the developer's llmhost settings.
        for name in [n for n in os.environ if n.startswith("LLMHOST_")]:
            env.delenv(name)
        env.setenv("XDG_CONFIG_HOME", str(home / "config"))
        env.setenv("XDG_DATA_HOME", str(home / "data"))
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=100 * 2**20,
            log_to_driver=False,
        )
        try:
            source = SettingsSource(
                None,
                {
                    "data_dir": str(home / "llmhost"),
                    "default_model": MODEL,
                    "port": port,
                    "engine": {"n_ctx": 1024, "n_parallel": SLOTS, "n_batch": 256, "n_threads": 1},
                },
            )
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(source, RaySettings(replicas=2)), name=APP_NAME, route_prefix="/")
            yield f"http://127.0.0.1:{port}"
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()


@dataclass
class Call:
    """One request as the client saw it."""

    stream: bool
    status: int = 0
    replica: str = ""
    text: str = ""
    started: bool = False  # the first text arrived
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    done: bool = False  # a stream's [DONE]
    errors: list[str] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


def body(i: int, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Request {i}: tell a long story about a river."}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": stream,
        "stream_options": {"include_usage": True},
    }


async def send(client: httpx.AsyncClient, i: int, max_tokens: int, call: Call) -> Call:
    stream = call.stream
    try:
        if not stream:
            resp = await client.post("/v1/chat/completions", json=body(i, max_tokens, False))
            call.status, call.replica = resp.status_code, resp.headers.get(REPLICA_HEADER, "")
            data = resp.json()
            if resp.status_code == 200:
                call.text = data["choices"][0]["message"]["content"]
                call.finish_reason, call.usage = data["choices"][0]["finish_reason"], data["usage"]
            else:
                call.errors.append(str(data))
            return call
        async with client.stream("POST", "/v1/chat/completions", json=body(i, max_tokens, True)) as resp:
            call.status, call.replica = resp.status_code, resp.headers.get(REPLICA_HEADER, "")
            if resp.status_code != 200:  # an error envelope, not a stream
                call.errors.append((await resp.aread()).decode())
                return call
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    call.done = True
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    call.errors.append(str(chunk["error"]))
                for choice in chunk.get("choices") or ():
                    call.text += choice["delta"].get("content") or ""
                    call.started = call.started or bool(call.text)
                    call.finish_reason = choice.get("finish_reason") or call.finish_reason
                call.usage = chunk.get("usage") or call.usage
        return call
    finally:
        call.ended.set()


def test_replicas_autoscale_on_queue_depth_between_the_bounds() -> None:
    from llmhost.config import load_settings

    settings = load_settings(None, engine={"n_parallel": 4, "max_queue": 16})
    fixed = replica_options(settings, RaySettings(replicas=2))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    scaled = replica_options(settings, RaySettings(replicas=1, max_replicas=3, replica_cpus=2))
    assert scaled["autoscaling_config"] == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 4.0,  # the engine's slots: a replica's queue beyond them is waiting
    }
    assert scaled["max_ongoing_requests"] == 4 and scaled["max_queued_requests"] == 48
    assert scaled["ray_actor_options"]["num_cpus"] == 2
    assert scaled["graceful_shutdown_timeout_s"] == settings.drain_seconds  # a stopping replica drains


def test_both_replicas_answer(base_url: str) -> None:
    async def main() -> list[Call]:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
            return await asyncio.gather(*(send(client, i, 8, Call(i % 2 == 0)) for i in range(12)))

    calls = asyncio.run(main())
    assert [c.status for c in calls] == [200] * 12, [c.errors for c in calls]
    assert all(c.finish_reason == "length" and c.usage["completion_tokens"] == 8 for c in calls)
    assert len({c.replica for c in calls}) == 2, "both replicas answer (x-llmhost-replica)"


def test_a_client_error_in_a_replica_keeps_its_status(base_url: str) -> None:
    resp = httpx.post(f"{base_url}/v1/chat/completions", json={**body(0, 4, False), "n": 99}, timeout=60)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == "n" and "parallel sequences" in error["message"]
    assert "Traceback" not in error["message"]
    assert resp.headers.get_list("x-request-id") == [resp.headers["x-request-id"]]  # once, from Serve


def test_embeddings_come_from_a_replica(base_url: str) -> None:
    resp = httpx.post(
        f"{base_url}/v1/embeddings",
        json={"model": DEFAULT_EMBEDDING_MODEL_NAME, "input": ["a river", "a mountain"]},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    vectors = [item["embedding"] for item in resp.json()["data"]]
    assert len(vectors) == 2 and len(vectors[0]) == 384
    assert resp.headers[REPLICA_HEADER]


def test_killing_a_replica_loses_no_accepted_request(base_url: str) -> None:
    """Twelve streams and four whole answers in flight; the replica serving the most started streams
    is killed. Every request still completes: streams resume on the other replica from the text they
    had sent, answers are sent again."""
    max_tokens = 48

    async def main() -> tuple[list[Call], str, int]:
        async with httpx.AsyncClient(base_url=base_url, timeout=180) as client:
            calls = [Call(stream=i % 4 != 3) for i in range(16)]
            tasks = [asyncio.create_task(send(client, 100 + i, max_tokens, c)) for i, c in enumerate(calls)]
            deadline = time.monotonic() + 90
            while sum(c.started for c in calls if c.stream) < 6:  # half the streams have sent text
                assert time.monotonic() < deadline, "the streams did not start"
                await asyncio.sleep(0.02)
            started = [c for c in calls if c.started]
            by_replica = Counter(c.replica for c in started)
            victim = by_replica.most_common(1)[0][0]
            kill_replica(victim)
            interrupted = sum(1 for c in started if c.replica == victim and not c.ended.is_set())
            await asyncio.gather(*tasks)
            return calls, victim, interrupted

    calls, victim, interrupted = asyncio.run(main())
    assert interrupted >= 1, "the kill caught streams half way"
    for call in calls:
        assert call.status == 200 and not call.errors, call.errors
        assert call.finish_reason == "length" and call.text
        assert call.usage["completion_tokens"] == max_tokens
        if call.stream:
            assert call.done
    # The application serves on: the surviving replica (and the one Serve starts in the dead one's place).
    resp = httpx.post(f"{base_url}/v1/chat/completions", json=body(999, 4, False), timeout=120)
    assert resp.status_code == 200 and resp.headers[REPLICA_HEADER] != victim


def kill_replica(replica_id: str) -> None:
    """Kill the Ray actor of Serve's replica ``replica_id`` (no restart: Serve starts a new one)."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    (name,) = [n for n in names if n.startswith("SERVE_REPLICA::") and n.endswith(f"#{replica_id}")]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

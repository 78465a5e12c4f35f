"""Back-pressure and cancellation over real HTTP: 429 with Retry-After, disconnects free slots."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.support import run_threads


def _body(max_tokens: int, stream: bool = False) -> dict[str, object]:
    return {
        "model": TINY,
        "prompt": "hello",
        "max_tokens": max_tokens,
        "stream": stream,
        "logit_bias": {"2": -100},
    }


def test_full_wait_queue_gets_429_with_retry_after(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", engine={"n_parallel": 1, "max_queue": 1, "n_ctx": 4096})
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    url = f"{live.base_url}/v1/completions"
    try:
        with httpx.Client(timeout=30) as client, client.stream("POST", url, json=_body(4000, True)) as first:
            assert first.status_code == 200
            first_lines = first.iter_lines()  # keep it: a dropped iterator closes the stream
            next(first_lines)  # the first request holds the only slot
            # The second waits in the queue (a stream's 200 comes with its first token, so use a thread).
            second = threading.Thread(target=lambda: httpx.post(url, json=_body(4), timeout=60))
            second.start()
            loaded = service.models.get_loaded(TINY)
            assert loaded is not None
            deadline = time.monotonic() + 10
            while loaded.engine.waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            third = httpx.post(url, json=_body(4))
            assert third.status_code == 429
            assert third.headers["retry-after"].isdigit()
            err = third.json()["error"]
            assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
            del first_lines
        second.join(60)
    finally:
        live.stop()
        service.close()


def test_client_disconnect_mid_stream_frees_the_slot(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", engine={"n_parallel": 1})
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    try:
        with httpx.stream("POST", f"{live.base_url}/v1/completions", json=_body(450, True)) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            del lines
        # The connection is closed; the engine must drop the sequence promptly.
        loaded = service.models.get_loaded(TINY)
        assert loaded is not None
        deadline = time.monotonic() + 5
        while loaded.engine.busy_slots and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loaded.engine.busy_slots == 0
        r2 = httpx.post(f"{live.base_url}/v1/completions", json=_body(3), timeout=30)
        assert r2.status_code == 200 and r2.json()["usage"]["completion_tokens"] == 3
    finally:
        live.stop()
        service.close()


def test_concurrent_streams_all_complete_in_full(server: LiveServer) -> None:
    """Eight streams at once (twice the slots): each gets every one of its 12 tokens, one chunk per
    token, its own (the bias forces a letter per stream, so a chunk sent to the wrong stream shows),
    then ``length`` and a usage chunk that counts the same 12."""

    def one(i: int) -> tuple[int, str, str | None, int | None]:
        body = _body(12, True)
        body["logit_bias"] = {"2": -100, str(3 + ord("a") + i): 100}
        body["stream_options"] = {"include_usage": True}
        chunks, text, finish, usage = 0, "", None, None
        with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    usage = event["usage"]["completion_tokens"]
                for choice in event["choices"]:
                    chunks += 1 if choice["text"] else 0
                    text += choice["text"]
                    finish = choice["finish_reason"] or finish
        return chunks, text, finish, usage

    results = run_threads(one, [(i,) for i in range(8)], timeout=120)
    assert results == [(12, chr(ord("a") + i) * 12, "length", 12) for i in range(8)]

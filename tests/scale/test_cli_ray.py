"""``llmhost serve --ray``: the flags that go wrong are refused in one line before anything starts; the
command serves through a replica and exits 0 on SIGTERM, also one sent while it is still deploying."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from llmhost.config import load_settings
from llmhost.service import Service
from tests.conftest import TINY
from tests.support import cli_env, free_port


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMHOST_", "RAY_"))}
    env |= {"LLMHOST_DATA_DIR": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    command = [sys.executable, "-m", "llmhost", "serve", "--no-model", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_replica_counts_need_ray(tmp_path: Path) -> None:
    result = serve(tmp_path, "--replicas", "2")
    assert result.returncode != 0
    assert result.stderr.strip() == "error: --replicas and --max-replicas need --ray"


def test_a_maximum_below_the_replicas_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    result = serve(tmp_path, "--ray", "--replicas", "3", "--max-replicas", "2")
    assert result.returncode != 0
    assert "max_replicas (2) is below replicas (3)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _served(tmp_path: Path, tiny_model_path: Path) -> tuple[subprocess.Popen[str], str]:
    """`llmhost serve --ray --replicas 1` on the tiny model, started (not yet ready)."""
    service = Service(load_settings(None, data_dir=tmp_path / "data", default_model=TINY))
    service.store.import_file(tiny_model_path, TINY)
    service.close()
    env = {k: v for k, v in cli_env(tmp_path, LLMHOST_DEFAULT_MODEL=TINY).items() if not k.startswith("RAY_")}
    port = free_port()
    command = [sys.executable, "-m", "llmhost", "serve", "--ray", "--replicas", "1", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, f"http://127.0.0.1:{port}"


def _stopped(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    return proc.returncode, output


@pytest.mark.xdist_group("ray")  # one Ray cluster at a time: with tests/scale/test_ray_serve.py's
def test_serve_ray_answers_through_a_replica_and_exits_0_on_sigterm(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    proc, url = _served(tmp_path, tiny_model_path)
    try:
        body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        deadline = time.monotonic() + 150
        answer = None
        # Serve's proxy listens before the application is up (404 until its routes arrive).
        while (answer is None or answer.status_code == 404) and time.monotonic() < deadline:
            assert proc.poll() is None, "the server stopped"
            with contextlib.suppress(httpx.TransportError):
                answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
            time.sleep(0.5)
        assert answer is not None and answer.status_code == 200, answer
        assert answer.headers["x-llmhost-replica"] and answer.json()["usage"]["completion_tokens"] >= 1
    finally:
        code, output = _stopped(proc)
    assert code == 0, output[-3000:]
    assert f"llmhost serving {TINY} on {url} (Ray Serve replicas: 1)" in output


@pytest.mark.xdist_group("ray")
def test_a_sigterm_while_deploying_still_exits_0(tmp_path: Path, tiny_model_path: Path) -> None:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    proc, _ = _served(tmp_path, tiny_model_path)
    output: list[str] = []
    deploying = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            # Serve's controller logs this when it starts the deployments, seconds before the app is up.
            if "Deploying new version of Deployment" in line:
                deploying.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 150
    try:
        while not deploying.wait(1.0):
            assert proc.poll() is None, "".join(output)[-3000:]
            assert time.monotonic() < deadline, "Serve never started deploying"
    except BaseException:
        proc.kill()  # no Ray cluster left behind for the next test
        proc.wait(timeout=60)
        raise
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    reader.join(timeout=10)
    log = "".join(output)
    assert code == 0, log[-3000:]
    assert "llmhost serving" not in log  # it stopped before the application was up

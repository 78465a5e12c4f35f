"""``llmhost serve --ray``: the flags that go wrong are refused in one line before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


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

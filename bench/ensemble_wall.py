"""An ensemble's wall time against its members' own: is it the slowest member's, or their sum?

Starts two llmhost servers on the embedded model (one thread each, so the two members do not share a
core on a 2-core machine): ``A`` serves the ensemble route ``panel`` = [A's own engine, B over HTTP]
and single-target routes for each member. Each round asks, in turn, member A alone, member B alone and
the ensemble (``aggregate = "all"``), with a prompt new to both prefix caches, 64 tokens, ``ignore_eos``;
prints the medians and the ratios of the ensemble's wall time to the slowest member and to the sum.

    .venv/bin/python bench/ensemble_wall.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

MODEL = "gemma3:270m"


def _serve(data: Path, port: int, extra: str = "") -> subprocess.Popen[bytes]:
    config = data / "llmhost.toml"
    config.write_text(
        f'port = {port}\ndata_dir = "{data}"\naccess_log = false\n'
        f"[engine]\nn_threads = 1\nn_parallel = 2\nn_ctx = 2048\n{extra}",
        encoding="utf-8",
    )
    env = {**os.environ, "LLMHOST_CONFIG": str(config)}
    exe = Path(sys.executable).with_name("llmhost")
    return subprocess.Popen(
        [str(exe), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _ready(port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"server on {port} did not become ready")


def _ask(port: int, model: str, prompt: str) -> tuple[float, dict[str, Any]]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 64,
        "temperature": 0,
        "ignore_eos": True,
    }
    started = time.perf_counter()
    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=300)
    r.raise_for_status()
    return time.perf_counter() - started, r.json()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port", type=int, default=18431)
    args = parser.parse_args()
    a_port, b_port = args.port, args.port + 1
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("a", "b"):
            (Path(tmp) / side).mkdir()
        b = _serve(Path(tmp) / "b", b_port)
        routes = (
            f'[providers.b]\ntype = "openai"\nbase_url = "http://127.0.0.1:{b_port}/v1"\n'
            "health_interval = 0\n"
            f'[routes.member-a]\ntargets = [{{provider = "local", model = "{MODEL}"}}]\n'
            f'[routes.member-b]\ntargets = [{{provider = "b", model = "{MODEL}"}}]\n'
            f'[routes.panel]\nstrategy = "ensemble"\naggregate = "all"\nretries = 0\n'
            f'targets = [{{provider = "local", model = "{MODEL}"}}, {{provider = "b", model = "{MODEL}"}}]\n'
        )
        a = _serve(Path(tmp) / "a", a_port, routes)
        try:
            _ready(a_port)
            _ready(b_port)
            _ask(a_port, "panel", "warm up")
            times: dict[str, list[float]] = {"member-a": [], "member-b": [], "panel": []}
            for r in range(args.rounds):
                for name in times:
                    seconds, body = _ask(a_port, name, f"Round {r} {name}: write a story about a lighthouse.")
                    times[name].append(seconds)
                    if name == "panel":
                        members = [m["status"] for m in body["ensemble"]["members"]]
                        assert members == ["ok", "ok"], body["ensemble"]
                print(
                    f"round {r + 1}: A {times['member-a'][-1]:.2f} s, B {times['member-b'][-1]:.2f} s, "
                    f"ensemble {times['panel'][-1]:.2f} s"
                )
        finally:
            for proc in (a, b):
                proc.terminate()
                proc.wait(timeout=30)
    med = {k: statistics.median(v) for k, v in times.items()}
    slowest, total = max(med["member-a"], med["member-b"]), med["member-a"] + med["member-b"]
    print(json.dumps({k: round(v, 3) for k, v in med.items()}))
    print(
        f"\nmedian of {args.rounds}: member A {med['member-a']:.2f} s, member B {med['member-b']:.2f} s, "
        f"ensemble {med['panel']:.2f} s = {med['panel'] / slowest:.2f}x the slowest member, "
        f"{med['panel'] / total:.2f}x their sum"
    )


if __name__ == "__main__":
    main()

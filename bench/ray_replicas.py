"""Ray Serve replicas: 16 concurrent streams on 2 replicas against 1 replica, in the same run (issue 17).

    .venv/bin/python bench/ray_replicas.py [--rounds 3] [--streams 16] [--max-tokens 128] [--plain]

One local Ray cluster (as many CPUs as the machine has) serves the embedded Gemma 3 270M through
``llmhost.scale.ray_serve`` (Serve's HTTP proxy -> llmhost's ingress -> model replicas), deployed in
turn as:

    1 replica  x 2 threads   the whole machine in one engine
    2 replicas x 1 thread    the same cores as two engines, each in its own process
    1 replica  x 1 thread    one of those two engines alone (what adding a replica adds to)

each replica with as many sequence slots as there are streams. ``--plain`` adds ``llmhost serve``
without Ray (one engine, 2 threads), which prices the proxy, the ingress and Ray's messages. Each round
runs every set-up once, the order rotating from round to round (a shared VM drifts by a quarter within
minutes), with prompts never sent before in the run, so no prefix cache helps; every request streams
``--max-tokens`` tokens (``ignore_eos``) from a ~64-token prompt. Reported: aggregate completion tokens
per second of each wave (all tokens / wall time), per round and as min / median / max, the ratios of the
medians, and how busy the machine was just before each wave (the set-up idle: other processes' load).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from compare import cpu_busy, free_port, running  # noqa: E402  (bench/ is on sys.path: this script's folder)
from ray import serve  # noqa: E402

from llmhost.bench import BenchResult, make_prompts, run_load  # noqa: E402
from llmhost.config import RaySettings  # noqa: E402
from llmhost.models.default import DEFAULT_MODEL_NAME  # noqa: E402
from llmhost.scale.ray_serve import APP_NAME, SettingsSource, build_app  # noqa: E402

MODEL = DEFAULT_MODEL_NAME
PROMPT_TOKENS = 64
N_CTX = 1024  # per slot: a 64-token prompt and 128 tokens fit


@dataclass(frozen=True, slots=True)
class Setup:
    name: str
    replicas: int  # 0: plain `llmhost serve`, no Ray
    threads: int


SETUPS = (
    Setup("1 replica x 2 threads", 1, 2),
    Setup("2 replicas x 1 thread", 2, 1),
    Setup("1 replica x 1 thread", 1, 1),
)
PLAIN = Setup("plain serve x 2 threads", 0, 2)


class Prompts:
    """Prompts never sent before in this run."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> list[str]:
        out = make_prompts(n, PROMPT_TOKENS, start=self.next)
        self.next += n
        return out


def overrides(data_dir: Path, port: int, streams: int, threads: int) -> dict[str, object]:
    return {
        "data_dir": str(data_dir),
        "default_model": MODEL,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "engine": {"n_ctx": N_CTX, "n_parallel": streams, "n_batch": 512, "n_threads": threads},
    }


@contextmanager
def on_ray(setup: Setup, data_dir: Path, port: int, streams: int) -> Iterator[str]:
    """The application deployed with ``setup``'s replicas and threads; deleted afterwards."""
    source = SettingsSource(None, overrides(data_dir, port, streams, setup.threads))
    scaling = RaySettings(replicas=setup.replicas, replica_cpus=float(setup.threads))
    t0 = time.monotonic()
    serve.run(build_app(source, scaling), name=APP_NAME, route_prefix="/")
    print(f"  {setup.name}: deployed in {time.monotonic() - t0:.1f}s", flush=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.delete(APP_NAME)


def plain(data_dir: Path, streams: int) -> AbstractContextManager[str]:
    """``llmhost serve`` without Ray: the same engine settings, 2 threads."""
    port = free_port()
    env = {
        "LLMHOST_DATA_DIR": str(data_dir),
        "LLMHOST_DEFAULT_MODEL": MODEL,
        "LLMHOST_LOG_LEVEL": "warning",
        "LLMHOST_ENGINE__N_CTX": str(N_CTX),
        "LLMHOST_ENGINE__N_PARALLEL": str(streams),
        "LLMHOST_ENGINE__N_BATCH": "512",
        "LLMHOST_ENGINE__N_THREADS": "2",
    }
    argv = [str(ROOT / ".venv" / "bin" / "llmhost"), "serve", "--port", str(port), "--no-access-log"]
    return running("llmhost", argv, env, "/ready", port, "ray-bench-plain")


def wave(base: str, prompts: Prompts, streams: int, max_tokens: int) -> BenchResult:
    return asyncio.run(
        run_load(
            base,
            MODEL,
            concurrency=streams,
            requests=streams,
            prompt=prompts.take(streams),
            max_tokens=max_tokens,
        )
    )


def measure(
    open_setup: Callable[[], AbstractContextManager[str]], prompts: Prompts, streams: int, max_tokens: int
) -> tuple[BenchResult, float]:
    """One wave of ``streams`` on a fresh deployment, and the share of the CPU busy just before it."""
    with open_setup() as base:
        # Warm-up: every replica has its model loaded at start; this touches each one's first request.
        wave(base, prompts, streams, 4)
        idle_busy = cpu_busy(1.0)  # the set-up idles: what other processes take of the machine
        result = wave(base, prompts, streams, max_tokens)
    if result.n_ok != streams:
        raise SystemExit(f"only {result.n_ok} of {streams} streams completed: {result.error_samples}")
    return result, idle_busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--plain", action="store_true", help="also plain `llmhost serve` (no Ray)")
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith("LLMHOST_")]:
        del os.environ[name]
    setups = (*SETUPS, PLAIN) if args.plain else SETUPS
    results: dict[str, list[float]] = {s.name: [] for s in setups}
    prompts = Prompts()
    cpus = os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="llmhost-ray-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            for r in range(args.rounds):
                order = setups[r % len(setups) :] + setups[: r % len(setups)]
                print(f"round {r + 1}: {', '.join(s.name for s in order)}", flush=True)
                for setup in order:

                    def opened(setup: Setup = setup) -> AbstractContextManager[str]:
                        if setup.replicas == 0:
                            return plain(data_dir, args.streams)
                        return on_ray(setup, data_dir, port, args.streams)

                    result, idle_busy = measure(opened, prompts, args.streams, args.max_tokens)
                    results[setup.name].append(result.aggregate_tps)
                    print(
                        f"    {setup.name:<24} {result.aggregate_tps:7.1f} tok/s  "
                        f"ttft p50 {result.ttft_p50 or 0:.2f}s  wall {result.wall_s:.1f}s  "
                        f"(CPU busy before: {idle_busy:.0%})",
                        flush=True,
                    )
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()
    print(
        f"\n{args.streams} streams x {args.max_tokens} tokens, {cpus} CPUs, {args.rounds} rounds "
        "(aggregate tok/s)"
    )
    print(f"{'set-up':<26}{'min':>8}{'median':>8}{'max':>8}")
    medians = {}
    for name, values in results.items():
        medians[name] = statistics.median(values)
        print(f"{name:<26}{min(values):8.1f}{medians[name]:8.1f}{max(values):8.1f}")
    whole, two, one = (medians[s.name] for s in SETUPS)  # 1 x 2 threads, 2 x 1 thread, 1 x 1 thread
    print(f"2 replicas x 1 thread / 1 replica x 2 threads: {two / whole:.2f}")
    print(f"2 replicas x 1 thread / 1 replica x 1 thread:  {two / one:.2f}")
    per_round = [a / b for a, b in zip(results[SETUPS[1].name], results[SETUPS[0].name], strict=True)]
    print(f"per round (2x1 / 1x2): {', '.join(f'{x:.2f}' for x in per_round)}")
    if args.plain:
        print(f"1 replica x 2 threads / plain serve: {whole / medians[PLAIN.name]:.2f}")


if __name__ == "__main__":
    main()

"""The gateway's upstream client, same run: the hand-written one, ours with llhttp, and aiohttp's.

    .venv/bin/python bench/transport_ab.py [--rounds N] [--duration S] [--baseline REV] [--no-aiohttp]

llmhost gateways run side by side, each ``llmhost serve`` with the same config as
``bench/gateway_compare.py`` (no local model, route ``bench`` -> ``[providers.up]`` type openai) in
front of the same ``bench/trivial_upstream.py``. They differ only in the upstream client:

* **old**: a snapshot of this working tree's ``llmhost/`` package with ``providers/http.py`` and
  ``providers/wire.py`` from ``--baseline`` (default: the newest commit whose ``wire.py`` parses HTTP by
  hand, before it framed with llhttp);
* **new**: the snapshot as it is (our pool, llhttp's framing through ``httptools``);
* **aiohttp**: the snapshot with ``bench/transport_ab_aiohttp.py`` as ``providers/wire.py``: aiohttp's
  client under the same interface (skipped when aiohttp is not installed, or with ``--no-aiohttp``).

The snapshots are copied into a temporary folder at start, so edits made to the tree during the run
change none of them, and each server is started with ``python -P`` and ``PYTHONPATH`` on its snapshot
(its log says which ``llmhost`` it imported, and the script checks).

Each round measures every variant back to back, in a rotating order: the machine's speed drifts, and
other processes share its cores. Per variant and round, with ``wrk``:

1. ``-t1 -c1 --latency``: p50 latency of a non-streamed chat completion;
2. ``-t2 -c16``: requests/s, and the server's CPU per request (its CPU time over its requests);
3. ``-t2 -c16`` with ``"stream": true``: streamed requests/s (the SSE line path).

The summary gives medians over rounds with their min-max spread, and the median of per-round ratios to
**old** (measured seconds apart, they cancel drift between rounds). Results: stdout and
``bench/results/transport-ab-DATE.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from compare import LOG_DIR, PYTHON, RESULTS, ROOT, free_port, machine_info, wait_idle  # noqa: E402
from gateway_compare import (  # noqa: E402
    API_KEY,
    CHAT_BODY,
    STREAM_BODY,
    CpuMeter,
    Server,
    WrkResult,
    llmhost_config,
    run_wrk,
    started,
    upstream_server,
    wrk_lua,
)

OLD, NEW, AIOHTTP = "old", "new", "aiohttp"
OLD_FILES = ("llmhost/providers/http.py", "llmhost/providers/wire.py")
AIOHTTP_WIRE = BENCH / "transport_ab_aiohttp.py"
# Runs ``llmhost serve`` from the snapshot on PYTHONPATH (``-P``: not from the current directory).
SERVE = (
    "import sys, llmhost; print('llmhost imported from', llmhost.__file__, flush=True); "
    "from llmhost.cli.main import main; sys.argv[0] = 'llmhost'; sys.exit(main())"
)


@dataclass
class Measurement:
    variant: str
    round: int
    c1: WrkResult
    c16: WrkResult
    stream: WrkResult
    cpu_us: float  # the server's CPU time per request at c=16, microseconds
    foreign: float  # share of the CPU other processes took during the c=16 run


@dataclass
class Report:
    measurements: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # ``compare.wait_idle`` appends here

    def of(self, variant: str) -> list[Measurement]:
        return [m for m in self.measurements if m.variant == variant]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def default_baseline() -> str:
    """The newest commit whose ``wire.py`` parses HTTP by hand (before it framed with ``httptools``),
    among those that changed ``http.py`` or ``wire.py``: its ``http.py`` is the newest that went with it."""
    for rev in git("rev-list", "HEAD", "--", *OLD_FILES).split():
        shown = subprocess.run(
            ["git", "show", f"{rev}:{OLD_FILES[1]}"], cwd=ROOT, capture_output=True, text=True
        )
        if shown.returncode == 0 and "import httptools" not in shown.stdout:
            return rev
    raise SystemExit("no commit has a hand-written llmhost/providers/wire.py; pass --baseline")


def snapshots(work: Path, baseline: str, variants: list[str]) -> dict[str, Path]:
    """``{variant: folder holding an llmhost/ package}``: the working tree's, with each variant's client."""
    out: dict[str, Path] = {}
    for variant in variants:
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / "llmhost", work / variant / "llmhost", ignore=ignore)
        out[variant] = work / variant
    for path in OLD_FILES:
        (out[OLD] / path).write_text(git("show", f"{baseline}:{path}"))
    if AIOHTTP in out:
        shutil.copyfile(AIOHTTP_WIRE, out[AIOHTTP] / OLD_FILES[1])
    return out


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMHOST_", "LITELLM_", "PYTHON"))}
    env.update(extra)
    return env


@contextmanager
def gateway(variant: str, tree: Path, upstream: str, work: Path) -> Iterator[Server]:
    config = work / f"llmhost-{variant}.toml"
    config.write_text(llmhost_config(upstream))
    env = _env(
        LLMHOST_CONFIG=str(config),
        LLMHOST_DATA_DIR=str(work / f"data-{variant}"),
        PYTHONPATH=str(tree),
    )
    port = free_port()
    argv = [str(PYTHON), "-P", "-c", SERVE, "serve", "--port", str(port)]
    name = f"llmhost-{variant}"
    with started(name, argv, env, "/ready", port) as server:
        log = (LOG_DIR / f"gateway-{name}.log").read_text(errors="replace")
        if f"llmhost imported from {tree / 'llmhost'}" not in log:
            raise RuntimeError(f"{name} did not import its snapshot ({tree}); see its log")
        yield server


def measure(
    server: Server, variant: str, rnd: int, scripts: dict[str, Path], seconds: int, meter: CpuMeter
) -> Measurement:
    url = server.base + "/v1/chat/completions"
    c1 = run_wrk(url, scripts["chat"], 1, 1, seconds)
    with meter.measure() as cpu:
        c16 = run_wrk(url, scripts["chat"], 2, 16, seconds)
    stream = run_wrk(url, scripts["stream"], 2, 16, seconds)
    cores = cpu[server.name]
    cpu_us = cores * c16.duration_s / c16.requests * 1e6 if c16.requests else float("nan")
    m = Measurement(variant, rnd, c1, c16, stream, cpu_us, cpu["foreign"])
    errors = c1.errors + c16.errors + stream.errors
    print(
        f"  round {rnd + 1} {variant}: c=1 p50 {c1.p50_ms or 0:.3f} ms | c=16 {c16.rps:.0f} req/s, "
        f"{cpu_us:.0f} µs CPU/req ({cores:.2f} cores) | stream c=16 {stream.rps:.0f} req/s | errors {errors} "
        f"| other processes {m.foreign:.0%}",
        flush=True,
    )
    return m


def run(
    variants: list[str],
    rounds: int,
    seconds: int,
    warmup: int,
    idle_wait: float,
    baseline: str,
    report: Report,
) -> None:
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmhost-transport-ab-")))
        trees = snapshots(work, baseline, variants)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
        scripts = {"chat": work / "chat.lua", "stream": work / "stream.lua"}
        scripts["chat"].write_text(wrk_lua(CHAT_BODY, headers))
        scripts["stream"].write_text(wrk_lua(STREAM_BODY, headers))
        up = stack.enter_context(upstream_server())
        servers = {v: stack.enter_context(gateway(v, trees[v], up.base, work)) for v in variants}
        meter = CpuMeter({up.name: up.pid, **{s.name: s.pid for s in servers.values()}})
        for s in servers.values():  # warm-up: connection pools, lazy imports, first-request set-up
            run_wrk(s.base + "/v1/chat/completions", scripts["chat"], 2, 16, warmup)
            run_wrk(s.base + "/v1/chat/completions", scripts["stream"], 2, 16, warmup)
        for rnd in range(rounds):
            if idle_wait > 0:
                wait_idle(report, f"round {rnd + 1}", idle_wait)  # type: ignore[arg-type]  # needs .notes
            shift = rnd % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                m = measure(servers[variant], variant, rnd, scripts, seconds, meter)
                report.measurements.append(m)
                if m.foreign > 0.10:
                    report.notes.append(
                        f"round {rnd + 1}, {variant}: other processes took {m.foreign:.0%} of the CPU"
                    )


# ----- report -----------------------------------------------------------------------------------------------
Metric = Callable[[Measurement], float]
METRICS: list[tuple[str, Metric, str]] = [
    ("c=1 p50 (ms)", lambda m: m.c1.p50_ms or float("nan"), ".3f"),
    ("c=16 req/s", lambda m: m.c16.rps, ".0f"),
    ("CPU per request at c=16 (µs)", lambda m: m.cpu_us, ".0f"),
    ("stream c=16 req/s", lambda m: m.stream.rps, ".0f"),
]


def ratios(report: Report, variant: str, metric: Metric) -> list[float]:
    """Per round: ``variant`` / old (measured seconds apart, so drift between rounds cancels)."""
    old = {m.round: metric(m) for m in report.of(OLD)}
    other = {m.round: metric(m) for m in report.of(variant)}
    return [other[r] / old[r] for r in sorted(set(old) & set(other)) if old[r]]


def table(report: Report, variants: list[str]) -> str:
    """One row per metric: each variant's median [min-max], then each one's ratio to old."""
    others = [v for v in variants if v != OLD]
    lines = [
        "| metric | " + " | ".join(f"{v} median [min-max]" for v in variants) + " | "
        + " | ".join(f"{v}/old, median of rounds [min-max]" for v in others) + " |",
        "|---|" + "---:|" * (len(variants) + len(others)),
    ]  # fmt: skip
    for label, metric, fmt in METRICS:
        cells = []
        for variant in variants:
            xs = [metric(m) for m in report.of(variant)]
            cells.append(f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}]" if xs else "-")
        for variant in others:
            rs = ratios(report, variant, metric)
            cells.append(f"{statistics.median(rs):.3f} [{min(rs):.3f}-{max(rs):.3f}]" if rs else "-")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    errors = {v: sum(m.c1.errors + m.c16.errors + m.stream.errors for m in report.of(v)) for v in variants}
    lines += ["", "errors (non-2xx + socket): " + ", ".join(f"{v} {n}" for v, n in errors.items())]
    return "\n".join(lines)


def rounds_table(report: Report) -> str:
    lines = [
        "| round | client | c=1 p50 (ms) | c=16 req/s | CPU/req (µs) | stream req/s | other processes |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for m in sorted(report.measurements, key=lambda m: (m.round, m.variant)):
        lines.append(
            f"| {m.round + 1} | {m.variant} | {m.c1.p50_ms or 0:.3f} | {m.c16.rps:.0f} | {m.cpu_us:.0f} "
            f"| {m.stream.rps:.0f} | {m.foreign:.0%} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up load per server (default 2)")
    ap.add_argument("--baseline", help="commit with the hand-written client (default: the newest one)")
    ap.add_argument("--no-aiohttp", action="store_true", help="leave out the aiohttp variant")
    ap.add_argument(
        "--no-new", action="store_true", help="leave out this tree's client (old vs aiohttp only)"
    )
    ap.add_argument(
        "--idle-wait",
        type=float,
        default=60,
        help="seconds to wait for an idle CPU before each round (0: don't)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed; on Debian/Ubuntu: sudo apt-get install -y wrk", file=sys.stderr)
        return 2
    baseline = args.baseline or default_baseline()
    variants = [OLD] if args.no_new else [OLD, NEW]
    if not args.no_aiohttp:
        if importlib.util.find_spec("aiohttp") is None:
            print("aiohttp is not installed: its variant is left out (pip install 'aiohttp>=3.11,<4')")
        else:
            variants.append(AIOHTTP)
    info = machine_info()
    info.pop("llama-cpp-python", None)
    info["baseline (old client)"] = f"{git('rev-parse', '--short', baseline).strip()}: {', '.join(OLD_FILES)}"
    for k, v in info.items():
        print(f"{k}: {v}")
    report = Report()
    t0 = time.monotonic()
    run(
        variants,
        max(1, args.rounds),
        max(1, args.duration),
        max(1, args.warmup),
        args.idle_wait,
        baseline,
        report,
    )
    summary, per_round = table(report, variants), rounds_table(report)
    print(f"\n{summary}\n\n{per_round}")
    for note in report.notes:
        print(f"note: {note}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"transport-ab-{dt.date.today().isoformat()}.md"
    head = [f"# Upstream client, same run: {', '.join(variants)} ({dt.date.today().isoformat()})", ""]
    head += [f"- {k}: {v}" for k, v in info.items()]
    head += [
        f"- {args.rounds} rounds, rotating order; wrk {args.duration} s per run: `-t1 -c1` (p50), "
        "`-t2 -c16` (req/s, the server's CPU per request), `-t2 -c16` streamed; non-streamed body "
        "`bench/gateway_compare.CHAT_BODY`. All gateways in front of `bench/trivial_upstream.py`.",
        "",
    ]
    notes = ["", "## Notes", "", *[f"- {n}" for n in report.notes]] if report.notes else []
    path.write_text("\n".join([*head, "## Summary", "", summary, "", "## Rounds", "", per_round, *notes, ""]))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

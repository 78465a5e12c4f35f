"""What the pipeline costs: llmhost with the trust stages off vs on, and vs an earlier commit, same run.

    .venv/bin/python bench/pipeline_compare.py [--ref 4e68b34] [--rounds 5] [--duration 8] [--quick]

Servers, all in front of the same trivial upstream (``bench/trivial_upstream.py``), on loopback, with the
machinery of ``bench/gateway_compare.py`` (wrk, the CPU meter):

* **upstream**: measured directly, the baseline;
* **off**: this checkout's ``llmhost serve`` gateway-only, the config-file key (no limits), the audit log
  switched off (``[audit] enabled = false``), no policy;
* **on**: the same, with a key made by ``llmhost keys create`` that has rpm, tpm and a budget (so the
  limit and budget stages do their work; the route's prices are non-zero), the audit log on, and the
  governance policy on when this checkout has one (``[policy]``);
* **ref** (``--ref REV``): the code of an earlier commit (``git archive REV llmhost``, run with
  ``PYTHONPATH``), its config-file key, for "the pipeline must not cost speed" comparisons.

Each round measures every server back to back, in rotating order: c=1 (``wrk -t1 -c1 --latency``: p50)
then c=16 (``-t2 -c16``: requests/s, and the server's CPU seconds per request from ``/proc``). Verdicts
use medians of per-round differences and ratios (the machine's speed drifts over minutes):

* on - off, p50 at c=1 ≤ 0.3 ms (issue 12: keys, limits, policy and audit on);
* off - upstream, p50 at c=1 ≤ 0.9 ms, and off / ref requests/s at c=16 ≥ 0.95 (issue 11).

Results: a markdown table on stdout and in ``bench/results/pipeline-DATE.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from compare import PYTHON, RESULTS, ROOT, VENV_BIN, free_port, machine_info, report_head  # noqa: E402
from gateway_compare import (  # noqa: E402
    API_KEY,
    CHAT_BODY,
    ROUTE,
    CpuMeter,
    Server,
    WrkResult,
    _clean_env,
    run_wrk,
    started,
    upstream_server,
    wrk_lua,
)

UPSTREAM, OFF, ON, REF = "upstream", "off", "on", "ref"
MAX_TRUST_MS = 0.3
MAX_ADDED_MS = 0.9
MIN_REF_RATIO = 0.95


def _config(upstream: str, *, audit: bool, priced: bool, policy: bool) -> str:
    price = ", input_price = 0.15, output_price = 0.6" if priced else ""
    text = f"""\
default_model = ""
api_key = "{API_KEY}"

[providers.up]
type = "openai"
base_url = "{upstream}/v1"

[routes.{ROUTE}]
targets = [{{ provider = "up", model = "bench"{price} }}]
"""
    if not audit:
        text += "\n[audit]\nenabled = false\n"
    if policy:
        text += '\n[policy]\nredact = ["email", "phone", "card", "iban", "api_key"]\n'
    return text


def _has_policy() -> bool:
    from llmhost.config import Settings

    return "policy" in Settings.model_fields


@contextmanager
def llmhost(
    name: str, upstream: str, work: Path, *, trust: bool, pythonpath: Path | None = None
) -> Iterator[tuple[Server, str]]:
    """One llmhost gateway; yields it and the key its load uses."""
    data = work / f"{name}-data"
    config = work / f"{name}.toml"
    config.write_text(
        _config(upstream, audit=trust or pythonpath is not None, priced=trust, policy=trust and _has_policy())
    )
    env = _clean_env(LLMHOST_DATA_DIR=str(data), LLMHOST_CONFIG=str(config))
    key = API_KEY
    if trust:
        made = subprocess.run(
            [str(VENV_BIN / "llmhost"), "keys", "create", "bench", "--scopes", "inference",
             "--rpm", "1000000000", "--tpm", "1000000000", "--budget", "1000000000"],
            env=env, capture_output=True, text=True, check=True, cwd=str(ROOT),
        )  # fmt: skip
        key = made.stdout.strip().splitlines()[-1]
    port = free_port()
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
        argv = [str(PYTHON), "-m", "llmhost", "serve", "--port", str(port)]
    else:
        argv = [str(VENV_BIN / "llmhost"), "serve", "--port", str(port)]
    with started(name, argv, env, "/ready", port) as server:
        yield server, key


def export_ref(ref: str, into: Path) -> Path:
    archive = into / "ref.tar"
    subprocess.run(["git", "archive", "-o", str(archive), ref, "llmhost"], cwd=str(ROOT), check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "ref", filter="data")
    return into / "ref"


@dataclass
class Measurement:
    server: str
    round: int
    c1: WrkResult
    c16: WrkResult
    cpu_ms_per_request: float  # the server's own CPU during the c=16 run, per request


def measure(server: Server, script: Path, meter: CpuMeter, rnd: int, seconds: int) -> Measurement:
    url = server.base + "/v1/chat/completions"
    c1 = run_wrk(url, script, 1, 1, seconds)
    with meter.measure() as cpu:
        c16 = run_wrk(url, script, 2, 16, seconds)
    per_request = cpu.get(server.name, 0.0) * c16.duration_s / max(c16.requests, 1) * 1e3
    m = Measurement(server.name, rnd, c1, c16, per_request)
    print(
        f"  round {rnd + 1} {server.name:<8} c=1 p50 {c1.p50_ms:.3f} ms | c=16 {c16.rps:.0f} req/s, "
        f"{per_request:.3f} ms CPU/request, errors {c1.errors + c16.errors} | other {cpu['foreign']:.0%}",
        flush=True,
    )
    return m


def per_round(ms: list[Measurement], a: str, b: str, f: str) -> list[float]:
    mine = {m.round: m for m in ms if m.server == a}
    theirs = {m.round: m for m in ms if m.server == b}
    out = []
    for r in sorted(set(mine) & set(theirs)):
        x, y = mine[r], theirs[r]
        if f == "p50" and x.c1.p50_ms is not None and y.c1.p50_ms is not None:
            out.append(x.c1.p50_ms - y.c1.p50_ms)
        elif f == "rps" and y.c16.rps:
            out.append(x.c16.rps / y.c16.rps)
        elif f == "cpu" and y.cpu_ms_per_request:
            out.append(x.cpu_ms_per_request / y.cpu_ms_per_request)
    return out


def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def verdicts(ms: list[Measurement]) -> list[tuple[str, bool | None, str]]:
    out: list[tuple[str, bool | None, str]] = []

    def add(label: str, values: list[float], ok: bool, fmt: str) -> None:
        rounds = ", ".join(format(v, fmt) for v in values)
        out.append((label, ok, f"{statistics.median(values):{fmt}} (per round: {rounds})"))

    if d := per_round(ms, ON, OFF, "p50"):
        add(
            f"trust stages on add ≤ {MAX_TRUST_MS} ms p50 at c=1 (on - off)",
            d,
            statistics.median(d) <= MAX_TRUST_MS,
            ".3f",
        )
    if d := per_round(ms, OFF, UPSTREAM, "p50"):
        add(
            f"llmhost adds ≤ {MAX_ADDED_MS} ms p50 at c=1 (off - upstream)",
            d,
            statistics.median(d) <= MAX_ADDED_MS,
            ".3f",
        )
    if d := per_round(ms, OFF, REF, "rps"):
        add(
            f"req/s at c=16 within 5% of the reference (off / ref ≥ {MIN_REF_RATIO})",
            d,
            statistics.median(d) >= MIN_REF_RATIO,
            ".3f",
        )
    for a, b in ((ON, OFF), (OFF, REF)):
        if d := per_round(ms, a, b, "cpu"):
            add(f"CPU per request, {a} / {b} (information)", d, True, ".3f")
    return out


def table(ms: list[Measurement]) -> str:
    lines = [
        "| server | c=1 p50 (ms) | c=1 p99 (ms) | c=16 req/s | CPU per request at c=16 (ms) | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in (UPSTREAM, OFF, ON, REF):
        mine = [m for m in ms if m.server == name]
        if not mine:
            continue
        p50 = _med([m.c1.p50_ms for m in mine if m.c1.p50_ms is not None])
        p99 = _med([m.c1.p99_ms for m in mine if m.c1.p99_ms is not None])
        rps = _med([m.c16.rps for m in mine])
        cpu = _med([m.cpu_ms_per_request for m in mine])
        errors = sum(m.c1.errors + m.c16.errors for m in mine)
        lines.append(f"| {name} | {p50:.3f} | {p99:.3f} | {rps:.0f} | {cpu:.3f} | {errors} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", help="an earlier commit to compare with (e.g. 4e68b34)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s runs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rounds, seconds = (1, 3) if args.quick else (args.rounds, args.duration)
    measurements: list[Measurement] = []
    t0 = time.monotonic()
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmhost-pipeline-bench-")))
        up = stack.enter_context(upstream_server())
        servers: list[tuple[Server, str]] = [(up, API_KEY)]
        servers.append(stack.enter_context(llmhost(OFF, up.base, work, trust=False)))
        servers.append(stack.enter_context(llmhost(ON, up.base, work, trust=True)))
        if args.ref:
            ref = export_ref(args.ref, work)
            servers.append(stack.enter_context(llmhost(REF, up.base, work, trust=False, pythonpath=ref)))
        scripts = {}
        for server, key in servers:
            script = work / f"{server.name}.lua"
            script.write_text(
                wrk_lua(CHAT_BODY, {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
            )
            scripts[server.name] = script
            run_wrk(server.base + "/v1/chat/completions", script, 2, 16, 2)  # warm-up
        meter = CpuMeter({s.name: s.pid for s, _ in servers})
        for rnd in range(rounds):
            turn = servers[rnd % len(servers) :] + servers[: rnd % len(servers)]
            for server, _ in turn:
                measurements.append(measure(server, scripts[server.name], meter, rnd, seconds))
    info = machine_info()
    info.pop("llama-cpp-python", None)
    if args.ref:
        info["reference"] = f"`{args.ref}` (git archive, run with PYTHONPATH)"
    result = table(measurements)
    checks = verdicts(measurements)
    lines = [
        *report_head("Pipeline cost: trust stages off vs on, and vs a reference commit", info, args.quick),
        f"- `bench/pipeline_compare.py`, {rounds} round(s) of {seconds} s wrk runs per server, rotating"
        " order; non-streamed chat completions through a route to `bench/trivial_upstream.py`.",
        "- off: config-file key, audit off. on: a created key with rpm/tpm/budget, priced route, audit on"
        + (", policy on (redaction)." if _has_policy() else "."),
        "",
        "## Results",
        "",
        result,
        "",
        "## Targets",
        "",
        *[f"- {'PASS' if ok else 'FAIL'}: {label} — {detail}" for label, ok, detail in checks],
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"pipeline-{dt.date.today().isoformat()}{'-quick' if args.quick else ''}.md"
    path.write_text("\n".join(lines))
    print()
    print(result)
    print()
    for label, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {label} — {detail}")
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f}s")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

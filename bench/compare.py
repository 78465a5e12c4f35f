"""Side-by-side benchmark: llmhost vs llama-cpp-python's server vs llama.cpp's C++ llama-server.

    .venv/bin/python bench/compare.py [--quick] [--servers llmhost,llama-cpp-python,llama-server]

Every server gets the same model file (the embedded Gemma 3 270M Q4_K_M), 2 threads and a 4096-token
context per slot, and is started alone on a free loopback port, warmed up with one request, measured
and killed. The same load generator (``llmhost.bench.run_load``) drives all of them over HTTP with
streamed ``/v1/completions`` requests (``ignore_eos`` for fixed-length outputs where the server honours
it). Results go to ``bench/results/<date>.md`` and ``.png``.

Scenarios:
  1. single stream   concurrency 1, 4 requests, 128 tokens, ~64-token prompts
  2. 8 streams       concurrency 8, 16 requests, 128 tokens
  3. prefix reuse    ~1,000-token shared prefix: TTFT of the first request vs a second one with the same
                     prefix and another suffix (llmhost and llama-server)
  4. overload        llmhost only: 200 requests at concurrency 16 against 8 slots, max_queue 8 (all must
                     complete) and max_queue 4 (the overflow gets 429 + Retry-After, nothing else fails)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmhost.bench import BenchResult, RequestRecord, make_prompts, run_load  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
CACHE = Path(os.environ.get("LLMHOST_BENCH_CACHE", Path.home() / ".cache" / "llmhost-bench"))
DATA_DIR = CACHE / "data"
LOG_DIR = CACHE / "logs"
RESULTS = ROOT / "bench" / "results"
BUILD_SCRIPT = ROOT / "bench" / "build_llama_server.sh"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_SERVER_BIN = CACHE / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}-noamx" / "llama-server"

MODEL = "gemma3:270m"
THREADS = 2
N_CTX = 4096  # per slot
SLOTS = 8

LLMHOST = "llmhost"
LCP = "llama-cpp-python"
LLAMA_SERVER = "llama-server"
ALL_SERVERS = (LLMHOST, LCP, LLAMA_SERVER)

SINGLE = "1 stream"
CONCURRENT = "8 streams"
PREFIX_COLD = "prefix: 1st (cold)"
PREFIX_WARM = "prefix: 2nd (reuse)"
OVERLOAD_Q8 = "overload q=8"
OVERLOAD_Q4 = "overload q=4"


@dataclass
class Plan:
    single_requests: int = 4
    concurrent_requests: int = 16
    max_tokens: int = 128
    prompt_tokens: int = 64
    prefix_tokens: int = 1000
    prefix_pairs: int = 3
    overload_requests: int = 200
    overload_concurrency: int = 16
    overload_max_tokens: int = 16

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            single_requests=2,
            concurrent_requests=8,
            max_tokens=32,
            prefix_tokens=500,
            prefix_pairs=1,
            overload_requests=48,
            overload_max_tokens=8,
        )


@dataclass
class Row:
    scenario: str
    server: str
    result: BenchResult
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # (scenario, round, server, result) from the interleaved rounds
    rounds: list[tuple[str, int, str, BenchResult]] = field(default_factory=list)

    def add(self, scenario: str, server: str, result: BenchResult, note: str = "") -> None:
        self.rows.append(Row(scenario, server, result, note))
        print(f"  {scenario:<20} {server:<17} {summary(result)}", flush=True)
        for sample in result.error_samples:
            print(f"    error sample: {sample}", flush=True)

    def get(self, scenario: str, server: str) -> BenchResult | None:
        return next((r.result for r in self.rows if r.scenario == scenario and r.server == server), None)


def summary(r: BenchResult) -> str:
    def f(v: float | None, d: int = 2) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    return (
        f"ok={r.n_ok} err={r.n_errors} 429={r.n_429} trunc={r.n_truncated} ttft p50={f(r.ttft_p50, 3)}s "
        f"p95={f(r.ttft_p95, 3)}s decode p50={f(r.decode_tps_p50, 1)} tok/s agg={r.aggregate_tps:.1f} tok/s "
        f"tokens/req={f(r.mean_tokens, 1)} wall={r.wall_s:.1f}s"
    )


# ----- machine, model, build -------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")]
        flags = next(
            (ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), []
        )
        info["CPU"] = models[0] if models else platform.processor() or "unknown"
        simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "f16c", "fma") if f in flags]
        info["SIMD"] = ", ".join(simd) or "none detected"
    except OSError:
        info["CPU"] = platform.processor() or "unknown"
    info["cores (os.cpu_count)"] = str(os.cpu_count())
    with suppress(AttributeError):
        info["usable cores (sched_getaffinity)"] = str(len(os.sched_getaffinity(0)))
    try:
        mem_kb = next(
            int(ln.split()[1])
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        )
        info["memory"] = f"{mem_kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        pass
    info["OS"] = f"{platform.system()} {platform.release()}"
    info["Python"] = platform.python_version()
    info["llama-cpp-python"] = LLAMA_CPP_PYTHON_VERSION
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["llmhost commit"] = rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def model_path() -> Path:
    """The embedded Gemma GGUF, imported into the bench's own data dir (done once)."""
    code = (
        "from llmhost.config import load_settings; from llmhost.service import Service; "
        "s = Service(load_settings()); print(s.prepare_default_model().path); s.close()"
    )
    env = {**os.environ, "LLMHOST_DATA_DIR": str(DATA_DIR), "LLMHOST_DEFAULT_MODEL": MODEL}
    env.pop("LLMHOST_CONFIG", None)
    out = subprocess.run([str(PYTHON), "-c", code], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"could not prepare the model:\n{out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def start_llama_server_build() -> subprocess.Popen[str] | None:
    """Start building llama-server in the background unless the cached binary exists."""
    if LLAMA_SERVER_BIN.exists():
        return None
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = (LOG_DIR / "llama-server-build.log").open("w")
    print(f"building llama-server in the background (log: {LOG_DIR / 'llama-server-build.log'}) ...")
    env = {**os.environ, "PYTHON": str(PYTHON)}
    return subprocess.Popen(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=log, text=True, env=env
    )


def wait_llama_server_build(proc: subprocess.Popen[str] | None) -> Path | None:
    if proc is None:
        return LLAMA_SERVER_BIN
    print("waiting for the llama-server build (measurements wait so compile jobs don't skew them) ...")
    t0 = time.monotonic()
    out, _ = proc.communicate()
    if proc.returncode != 0 or not LLAMA_SERVER_BIN.exists():
        print(f"llama-server build failed (see {LOG_DIR / 'llama-server-build.log'}); skipping it")
        return None
    print(f"llama-server built in {time.monotonic() - t0:.0f}s: {out.strip()}")
    return LLAMA_SERVER_BIN


def cpu_busy(interval: float = 2.0) -> float:
    """Fraction of all CPU time (0..1) spent busy over ``interval`` seconds, from /proc/stat."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = total1 - total0
    return 0.0 if total <= 0 else 1.0 - (idle1 - idle0) / total


# Servers this benchmark runs: their CPU time and this process's (the load generator) are "ours"; any
# other process's is contention. Servers that ended leave their last reading in ``_ENDED_TICKS``.
SERVER_PIDS: set[int] = set()
_ENDED_TICKS = 0


def _process_ticks(pid: int) -> int:
    with suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        rest = stat[stat.rindex(")") + 2 :].split()
        return int(rest[11]) + int(rest[12])  # utime + stime
    return 0


def _cpu_ticks() -> tuple[int, int, int]:
    """(all CPU ticks, busy ticks, ticks used by this process and every server it ran) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields)
    busy = total - fields[3] - (fields[4] if len(fields) > 4 else 0)
    own = _ENDED_TICKS + sum(_process_ticks(pid) for pid in (os.getpid(), *SERVER_PIDS))
    return total, busy, own


# Lines about other processes' CPU use while a server was measured, and that share (0..1) for each
# server run, both filled by ``running``.
CONTENTION: list[str] = []
FOREIGN: list[float] = []
MAX_FOREIGN = 0.10  # above this share of the CPU taken by other processes, a phase is measured again


def wait_idle(report: Report, phase: str, max_wait: float, threshold: float = 0.15) -> None:
    """Wait (up to ``max_wait`` s) until other processes leave the CPU idle: the servers and the load
    generator need all cores, and a busy neighbour would be measured as a slow server."""
    t0 = time.monotonic()
    busy = cpu_busy()
    warned = False
    while busy > threshold and time.monotonic() - t0 < max_wait:
        if not warned:
            print(f"CPU {busy:.0%} busy with other processes; waiting up to {max_wait:.0f}s before {phase}")
            warned = True
        time.sleep(5)
        busy = cpu_busy()
    if busy > threshold:
        msg = f"{phase}: measured while other processes kept the CPU {busy:.0%} busy"
        print(f"warning: {msg}", flush=True)
        report.notes.append(msg)
    elif warned:
        print(f"CPU idle after {time.monotonic() - t0:.0f}s", flush=True)


# ----- server processes -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running(
    name: str, argv: list[str], env: dict[str, str] | None, ready_path: str, port: int, tag: str
) -> Iterator[str]:
    """Start one server, wait until ``ready_path`` answers 200, yield its base URL, then stop it."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{tag}.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=str(ROOT)
        )
        try:
            t0 = time.monotonic()
            while True:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready:\n{tail}")
                try:
                    if httpx.get(base + ready_path, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - t0 > 300:
                    raise RuntimeError(f"{name} not ready after 300 s (log: {log_path})")
                time.sleep(0.25)
            print(f"{name} ready in {time.monotonic() - t0:.1f}s on {base} (log: {log_path})", flush=True)
            SERVER_PIDS.add(proc.pid)
            before = _cpu_ticks()
            yield base
            after = _cpu_ticks()
            total = after[0] - before[0]
            foreign = (after[1] - before[1]) - (after[2] - before[2])
            FOREIGN.append(max(0.0, foreign / total) if total > 0 else 0.0)
            if total > 0 and foreign / total > MAX_FOREIGN:
                msg = f"{tag}: other processes used {foreign / total:.0%} of the CPU while it was measured"
                print(f"warning: {msg}", flush=True)
                CONTENTION.append(msg)
        finally:
            if proc.pid in SERVER_PIDS:  # its CPU time stays counted as ours once it is gone
                global _ENDED_TICKS
                _ENDED_TICKS += _process_ticks(proc.pid)
                SERVER_PIDS.discard(proc.pid)
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


def llmhost_server(model_file: Path, max_queue: int | None = None) -> Any:
    del model_file  # llmhost serves it from its store, by name
    port = free_port()
    env = {
        "LLMHOST_DATA_DIR": str(DATA_DIR),
        "LLMHOST_DEFAULT_MODEL": MODEL,
        "LLMHOST_ENGINE__N_PARALLEL": str(SLOTS),
        "LLMHOST_ENGINE__N_CTX": str(N_CTX),
        "LLMHOST_ENGINE__N_THREADS": str(THREADS),
        "LLMHOST_LOG_LEVEL": "warning",
    }
    if max_queue is not None:
        env["LLMHOST_ENGINE__MAX_QUEUE"] = str(max_queue)
    for var in ("LLMHOST_CONFIG", "LLMHOST_API_KEY", "LLMHOST_MODELS_DIR", "LLMHOST_PORT", "LLMHOST_HOST"):
        os.environ.pop(var, None)
    tag = "llmhost" if max_queue is None else f"llmhost-q{max_queue}"
    argv = [str(VENV_BIN / "llmhost"), "serve", "--port", str(port)]
    return running(LLMHOST, argv, env, "/ready", port, tag)


def lcp_server(model_file: Path) -> Any:
    port = free_port()
    argv = [
        str(PYTHON), "-m", "llama_cpp.server", "--model", str(model_file), "--model_alias", MODEL,
        "--port", str(port), "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS),
        "--n_ctx", str(N_CTX), "--interrupt_requests", "False",
    ]  # fmt: skip
    return running(LCP, argv, None, "/v1/models", port, "llama-cpp-python")


def llama_server(binary: Path, model_file: Path, parallel: int) -> Any:
    port = free_port()
    argv = [
        str(binary), "-m", str(model_file), "--alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "-t", str(THREADS), "-tb", str(THREADS), "--parallel", str(parallel), "-c", str(parallel * N_CTX),
        "--no-webui",
    ]  # fmt: skip
    return running(LLAMA_SERVER, argv, None, "/health", port, f"llama-server-p{parallel}")


# ----- scenarios --------------------------------------------------------------------------------------------
_variant = 0


def fresh_prompts(n: int, n_tokens: int) -> list[str]:
    """Prompts never sent before in this run, so no server can answer them from its prompt cache."""
    global _variant
    out = make_prompts(n, n_tokens, start=_variant)
    _variant += n
    return out


def load(base: str, **kw: Any) -> BenchResult:
    return asyncio.run(run_load(base, MODEL, **kw))


def warm_up(base: str) -> None:
    r = load(base, concurrency=1, requests=1, prompt=fresh_prompts(1, 16), max_tokens=8)
    if r.n_ok != 1:
        raise RuntimeError(f"warm-up request failed: {r.error_samples}")


def single(report: Report, server: str, base: str, plan: Plan) -> None:
    n = plan.single_requests
    r = load(
        base,
        concurrency=1,
        requests=n,
        prompt=fresh_prompts(n, plan.prompt_tokens),
        max_tokens=plan.max_tokens,
    )
    report.add(SINGLE, server, r)


def concurrent(report: Report, server: str, base: str, plan: Plan) -> None:
    n = plan.concurrent_requests
    r = load(
        base,
        concurrency=SLOTS,
        requests=n,
        prompt=fresh_prompts(n, plan.prompt_tokens),
        max_tokens=plan.max_tokens,
    )
    report.add(CONCURRENT, server, r)


def prefix_reuse(report: Report, server: str, base: str, plan: Plan) -> None:
    cold: list[RequestRecord] = []
    warm: list[RequestRecord] = []
    wall_cold = wall_warm = 0.0
    extra = {"cache_prompt": True}
    for _ in range(plan.prefix_pairs):
        (prefix,) = fresh_prompts(1, plan.prefix_tokens)
        (s1, s2) = fresh_prompts(2, 24)
        a = load(base, concurrency=1, requests=1, prompt=f"{prefix}\n\n{s1}", max_tokens=8, extra_body=extra)
        b = load(base, concurrency=1, requests=1, prompt=f"{prefix}\n\n{s2}", max_tokens=8, extra_body=extra)
        cold += a.records
        warm += b.records
        wall_cold += a.wall_s
        wall_warm += b.wall_s
    rc = BenchResult.from_records(cold, wall_cold)
    rw = BenchResult.from_records(warm, wall_warm)
    report.add(PREFIX_COLD, server, rc)
    report.add(PREFIX_WARM, server, rw)
    if rc.ttft_p50 and rw.ttft_p50:
        report.notes.append(
            f"prefix reuse, {server}: 2nd-request TTFT is {rw.ttft_p50 / rc.ttft_p50:.0%} of the 1st "
            f"({rw.ttft_p50:.3f}s vs {rc.ttft_p50:.3f}s, median of {plan.prefix_pairs} pairs, "
            f"~{plan.prefix_tokens}-token prefix)"
        )


def overload(report: Report, base: str, plan: Plan, max_queue: int) -> None:
    n = plan.overload_requests
    r = load(
        base,
        concurrency=plan.overload_concurrency,
        requests=n,
        prompt=fresh_prompts(n, 32),
        max_tokens=plan.overload_max_tokens,
    )
    scenario = OVERLOAD_Q8 if max_queue >= plan.overload_concurrency - SLOTS else OVERLOAD_Q4
    report.add(scenario, LLMHOST, r)
    label = f"{n} requests, concurrency {plan.overload_concurrency}, {SLOTS} slots, max_queue {max_queue}"
    if scenario == OVERLOAD_Q8:
        ok = r.n_ok == n and r.n_errors == 0 and r.n_429 == 0 and r.n_truncated == 0
        report.checks.append((f"{label}: all complete, none truncated", ok, summary(r)))
    else:
        ok = (
            r.n_errors == 0
            and r.n_truncated == 0
            and r.n_429 > 0
            and r.n_429_retry_after == r.n_429
            and r.n_ok + r.n_429 == n
        )
        report.checks.append(
            (f"{label}: overflow gets 429 + Retry-After, nothing else fails", ok,
             f"{summary(r)}; 429 with Retry-After: {r.n_429_retry_after}/{r.n_429}")
        )  # fmt: skip


def guarded(
    report: Report, what: str, fn: Callable[[], None], idle_wait: float = 0.0, retries: int = 0
) -> None:
    """Run one phase; if other processes took more than ``MAX_FOREIGN`` of the CPU meanwhile, run it
    again (up to ``retries`` times) and keep the least disturbed attempt. A failure is noted, not raised."""
    attempts: list[tuple[float, list[Row], list[tuple[str, bool, str]], list[str], list[str]]] = []
    for attempt in range(retries + 1):
        if idle_wait > 0:
            wait_idle(report, what, idle_wait)
        marks = (len(report.rows), len(report.checks), len(report.notes), len(CONTENTION), len(FOREIGN))
        try:
            fn()
        except Exception as exc:  # one broken server must not lose the others' results
            msg = f"{what} failed: {type(exc).__name__}: {str(exc)[:1500]}"
            print(msg, flush=True)
            report.notes.append(msg.splitlines()[0])
            return
        foreign = max(FOREIGN[marks[4] :], default=0.0)
        attempts.append(
            (
                foreign,
                report.rows[marks[0] :],
                report.checks[marks[1] :],
                report.notes[marks[2] :],
                CONTENTION[marks[3] :],
            )
        )
        del report.rows[marks[0] :], report.checks[marks[1] :], report.notes[marks[2] :]
        del CONTENTION[marks[3] :]
        if foreign <= MAX_FOREIGN:
            break
        if attempt < retries:
            print(f"{what}: disturbed by other processes ({foreign:.0%} of the CPU); measuring it again")
    best = min(attempts, key=lambda a: a[0])
    if len(attempts) > 1:
        print(f"{what}: keeping the attempt with {best[0]:.0%} foreign CPU (of {len(attempts)})", flush=True)
    report.rows += best[1]
    report.checks += best[2]
    report.notes += best[3]
    CONTENTION.extend(best[4])


def run_all(servers: list[str], plan: Plan, report: Report, idle_wait: float, retries: int) -> None:
    build = start_llama_server_build() if LLAMA_SERVER in servers else None
    model_file = model_path()
    print(f"model: {model_file}")
    binary = wait_llama_server_build(build) if LLAMA_SERVER in servers else None

    if LLMHOST in servers:

        def llmhost_main() -> None:
            with llmhost_server(model_file) as base:
                warm_up(base)
                single(report, LLMHOST, base, plan)
                concurrent(report, LLMHOST, base, plan)
                prefix_reuse(report, LLMHOST, base, plan)

        guarded(report, "llmhost", llmhost_main, idle_wait, retries)
        for q in (SLOTS, 4):

            def llmhost_overload(q: int = q) -> None:
                with llmhost_server(model_file, max_queue=q) as base:
                    warm_up(base)
                    overload(report, base, plan, q)

            guarded(report, f"llmhost overload (max_queue {q})", llmhost_overload, idle_wait, retries)

    if LCP in servers:

        def lcp_main() -> None:
            with lcp_server(model_file) as base:
                warm_up(base)
                single(report, LCP, base, plan)
                concurrent(report, LCP, base, plan)

        guarded(report, "llama-cpp-python", lcp_main, idle_wait, retries)

    if LLAMA_SERVER in servers and binary is not None:

        def ls_single() -> None:
            with llama_server(binary, model_file, 1) as base:
                warm_up(base)
                single(report, LLAMA_SERVER, base, plan)

        def ls_main() -> None:
            with llama_server(binary, model_file, SLOTS) as base:
                warm_up(base)
                concurrent(report, LLAMA_SERVER, base, plan)
                prefix_reuse(report, LLAMA_SERVER, base, plan)

        guarded(report, "llama-server (1 slot)", ls_single, idle_wait, retries)
        guarded(report, "llama-server (8 slots)", ls_main, idle_wait, retries)


def interleaved(servers: list[str], plan: Plan, report: Report, rounds: int, idle_wait: float) -> None:
    """Every server up at once; each round measures each of them back to back, in a rotating order.

    The machine's speed drifts by up to ±25% over minutes (a shared VM), so servers measured minutes
    apart are not comparable; within a round they are seconds apart, and the median of per-round ratios
    cancels the drift.
    """
    from contextlib import ExitStack

    model_file = model_path()
    binary = wait_llama_server_build(start_llama_server_build()) if LLAMA_SERVER in servers else None
    with ExitStack() as stack:
        bases: dict[tuple[str, str], str] = {}
        if LLMHOST in servers:
            base = stack.enter_context(llmhost_server(model_file))
            bases[(SINGLE, LLMHOST)] = bases[(CONCURRENT, LLMHOST)] = base
        if LCP in servers:
            base = stack.enter_context(lcp_server(model_file))
            bases[(SINGLE, LCP)] = bases[(CONCURRENT, LCP)] = base
        if LLAMA_SERVER in servers and binary is not None:
            bases[(SINGLE, LLAMA_SERVER)] = stack.enter_context(llama_server(binary, model_file, 1))
            bases[(CONCURRENT, LLAMA_SERVER)] = stack.enter_context(llama_server(binary, model_file, SLOTS))
        for base in set(bases.values()):
            warm_up(base)
        order = [s for s in ALL_SERVERS if s in servers]
        for rnd in range(rounds):
            if idle_wait > 0:
                wait_idle(report, f"round {rnd + 1}", idle_wait)
            turn = order[rnd % len(order) :] + order[: rnd % len(order)]
            for scenario, concurrency, n in (
                (SINGLE, 1, plan.single_requests),
                (CONCURRENT, SLOTS, plan.concurrent_requests),
            ):
                for server in turn:
                    if (scenario, server) not in bases:
                        continue
                    r = load(
                        bases[(scenario, server)],
                        concurrency=concurrency,
                        requests=n,
                        prompt=fresh_prompts(n, plan.prompt_tokens),
                        max_tokens=plan.max_tokens,
                    )
                    report.rounds.append((scenario, rnd, server, r))
                    print(f"  round {rnd + 1} {scenario:<10} {server:<17} {summary(r)}", flush=True)


def rounds_table(report: Report) -> str:
    """Median per-round ratios (llmhost ÷ peer) of aggregate tok/s, from the interleaved rounds."""
    from statistics import median

    lines = [
        "| scenario | peer | rounds | llmhost aggregate tok/s (median) | peer aggregate tok/s (median) "
        "| per-round ratios llmhost/peer | median ratio |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for scenario in (SINGLE, CONCURRENT):
        own = {rnd: r for sc, rnd, srv, r in report.rounds if sc == scenario and srv == LLMHOST}
        for peer in (LLAMA_SERVER, LCP):
            theirs = {rnd: r for sc, rnd, srv, r in report.rounds if sc == scenario and srv == peer}
            common = sorted(set(own) & set(theirs))
            ratios = [
                own[i].aggregate_tps / theirs[i].aggregate_tps for i in common if theirs[i].aggregate_tps
            ]
            if not ratios:
                continue
            lines.append(
                f"| {scenario} | {peer} | {len(ratios)} | {median(own[i].aggregate_tps for i in common):.1f} "
                f"| {median(theirs[i].aggregate_tps for i in common):.1f} "
                f"| {', '.join(f'{x:.2f}' for x in ratios)} | {median(ratios):.2f}x |"
            )
    return "\n".join(lines)


# ----- output -----------------------------------------------------------------------------------------------
def _f(v: float | None, d: int = 2) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def markdown_table(report: Report) -> str:
    lines = [
        "| scenario | server | TTFT p50 (s) | TTFT p95 (s) | decode tok/s p50 | aggregate tok/s | tokens/req "
        "| ok / err / 429 / trunc | TTFT p50 llmhost/peer | decode llmhost/peer | aggregate llmhost/peer |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in report.rows:
        r = row.result
        own = report.get(row.scenario, LLMHOST)
        peer = row.server != LLMHOST and own is not None
        lines.append(
            f"| {row.scenario} | {row.server} | {_f(r.ttft_p50, 3)} | {_f(r.ttft_p95, 3)} "
            f"| {_f(r.decode_tps_p50, 1)} | {r.aggregate_tps:.1f} | {_f(r.mean_tokens, 0)} "
            f"| {r.n_ok} / {r.n_errors} / {r.n_429} / {r.n_truncated} "
            f"| {_ratio(own.ttft_p50, r.ttft_p50) if peer and own else ''} "
            f"| {_ratio(own.decode_tps_p50, r.decode_tps_p50) if peer and own else ''} "
            f"| {_ratio(own.aggregate_tps, r.aggregate_tps) if peer and own else ''} |"
        )
    return "\n".join(lines)


def report_head(title: str, info: dict[str, str], quick: bool) -> list[str]:
    """A results file's title (dated), its machine section, and the heading of its set-up section."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return [
        f"# {title} — {stamp}" + (" (quick)" if quick else ""),
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        "",
        "## Set-up",
        "",
    ]


def write_markdown(path: Path, report: Report, info: dict[str, str], plan: Plan, quick: bool) -> str:
    table = markdown_table(report)
    parts = [
        *report_head("llmhost vs peers", info, quick),
        f"- Model: `{MODEL}` (Gemma 3 270M Q4_K_M), the same GGUF file for every server.",
        f"- {THREADS} threads, {N_CTX}-token context per slot. llmhost: {SLOTS} slots. llama-cpp-python's "
        f"server: one sequence at a time (`--interrupt_requests False`). llama-server: `--parallel 1` for "
        f"the single stream, `--parallel {SLOTS} -c {SLOTS * N_CTX}` otherwise.",
        f"- Streamed `/v1/completions`, temperature 0, `ignore_eos: true` (llama-cpp-python's server ignores "
        f"it, so its streams may stop early: see tokens/req), max_tokens {plan.max_tokens}, "
        f"~{plan.prompt_tokens}-token prompts, each prompt unique (no prompt-cache help). One warm-up "
        f"request per server start. Load generator: `llmhost.bench.run_load` on the same machine "
        f"(it shares the CPU).",
        "- TTFT: request sent → first content token. Decode tok/s: per stream, (tokens - 1) / (last - first "
        "token). Aggregate tok/s: all completion tokens / wall time of the scenario.",
        "- Ratios are llmhost ÷ peer: above 1 is better for tok/s, below 1 is better for TTFT.",
        "",
        "## Results",
        "",
        table,
        "",
    ]
    if report.rounds:
        parts += [
            "## Interleaved rounds",
            "",
            "All servers up at once; each round runs the scenario on each server back to back (rotating "
            "order), so a drift in the machine's speed hits them alike. These ratios are the comparison "
            "to quote; the table above measures each server in its own stretch of time.",
            "",
            rounds_table(report),
            "",
        ]
    if report.checks:
        parts += ["## Overload checks (llmhost)", ""]
        parts += [f"- {'PASS' if ok else 'FAIL'}: {label} — {detail}" for label, ok, detail in report.checks]
        parts.append("")
    if report.notes:
        parts += ["## Notes", "", *[f"- {n}" for n in report.notes], ""]
    text = "\n".join(parts)
    path.write_text(text)
    return table


def write_chart(path: Path, report: Report) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return False
    servers = [s for s in ALL_SERVERS if any(r.server == s for r in report.rows)]
    colors = {LLMHOST: "#2b7bba", LCP: "#e69f00", LLAMA_SERVER: "#009e73"}
    panels: list[tuple[str, list[str], Callable[[BenchResult], float | None], bool]] = [
        ("aggregate tok/s (higher is better)", [SINGLE, CONCURRENT], lambda r: r.aggregate_tps, False),
        ("TTFT p50, s (lower is better, log scale)", [SINGLE, CONCURRENT, PREFIX_COLD, PREFIX_WARM],
         lambda r: r.ttft_p50, True),
    ]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 4.8))
    for ax, (title, scenarios, metric, log) in zip(axes, panels, strict=True):
        width = 0.8 / max(1, len(servers))
        for i, server in enumerate(servers):
            xs, ys = [], []
            for j, sc in enumerate(scenarios):
                res = report.get(sc, server)
                val = metric(res) if res is not None else None
                if val:
                    xs.append(j + (i - (len(servers) - 1) / 2) * width)
                    ys.append(val)
            bars = ax.bar(xs, ys, width, label=server, color=colors.get(server))
            ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
        ax.set_xticks(range(len(scenarios)), scenarios, fontsize=8)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{MODEL}, {THREADS} threads, {os.cpu_count()} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter requests: a smoke run")
    ap.add_argument(
        "--servers", default=",".join(ALL_SERVERS), help="comma-separated subset of " + ", ".join(ALL_SERVERS)
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of the 1- and 8-stream scenarios (0: none)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    ap.add_argument(
        "--idle-wait",
        type=float,
        default=600,
        help="seconds to wait for other processes to leave the CPU idle before each server (0: don't check)",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help="measure a server again (at most this often) when other processes took over 10%% of the CPU",
    )
    args = ap.parse_args()
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(ALL_SERVERS)
    if unknown:
        ap.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    plan = Plan.quick() if args.quick else Plan()
    info = machine_info()
    for k, v in info.items():
        print(f"{k}: {v}")
    report = Report()
    t0 = time.monotonic()
    run_all(servers, plan, report, args.idle_wait, args.retries)
    if args.rounds > 0:
        interleaved(servers, plan, report, args.rounds, args.idle_wait)
    report.notes += CONTENTION
    args.out.mkdir(parents=True, exist_ok=True)
    stem = dt.date.today().isoformat() + ("-quick" if args.quick else "")
    md = args.out / f"{stem}.md"
    table = write_markdown(md, report, info, plan, args.quick)
    png = args.out / f"{stem}.png"
    charted = write_chart(png, report)
    print()
    print(table)
    for label, ok, detail in report.checks:
        print(f"{'PASS' if ok else 'FAIL'}: {label} — {detail}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"\nwrote {md}" + (f" and {png}" if charted else "") + f" in {time.monotonic() - t0:.0f}s")
    return 0 if all(ok for _, ok, _ in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main())

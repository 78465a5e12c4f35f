"""Many streams, side by side: llmhost vs llama.cpp's llama-server with 32 slots each (issue 14).

    .venv/bin/python bench/scale_compare.py [--rounds 3] [--waves 1,8,32,64] [--quick]

Both servers are up at once on the same GGUF (the embedded Gemma 3 270M Q4_K_M), 2 threads, 32 slots of
4096 tokens each. Each round runs every wave size on both servers back to back, the order of the two
alternating from round to round; every request has a prompt never sent before in the run, so no
prefix-cache hit helps either server, and asks for 128 tokens with ``ignore_eos``. A wave of 64 on 32
slots must complete in full (none truncated, none refused). The report gives, per wave size, the
min / median / max over rounds of llmhost's aggregate tok/s and TTFT p95 divided by llama-server's, so
instability shows; rounds run in order, so later rounds also show whether speed depends on the waves
that came before (the replay the issue asks for: round N runs after every earlier round's mix).

Results go to ``bench/results/<date>-scale.md``. Reuses the server launchers of ``bench/compare.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import compare  # bench/ is not a package: run as a script, its folder is on sys.path
import httpx
from compare import LLAMA_SERVER, LLMHOST, RESULTS, BenchResult, fresh_prompts, load, summary, warm_up

SLOTS = 32
MAX_TOKENS = 128
PROMPT_TOKENS = 64


@dataclass(frozen=True, slots=True)
class Wave:
    concurrency: int
    requests: int


def waves_of(spec: str, quick: bool) -> list[Wave]:
    sizes = [int(x) for x in spec.split(",") if x.strip()]
    if not sizes or any(n < 1 for n in sizes):
        raise SystemExit("--waves takes a comma-separated list of stream counts, e.g. 1,8,32,64")
    # One request per stream (four for a single stream, which is over too fast to time otherwise).
    return [Wave(n, (2 if quick else 4) if n == 1 else n) for n in sizes]


def engine_counters(base: str) -> tuple[float, float]:
    """llmhost's decode steps and passes so far (``/metrics``): passes per step says how well packed
    each step's batch was (1.0: one pass over the weights per step)."""
    text = httpx.get(f"{base.removesuffix('/v1')}/metrics", timeout=10).text
    found = {"llmhost_model_decode_steps_total": 0.0, "llmhost_model_decode_passes_total": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in found:
            found[name] += float(line.rsplit(" ", 1)[1])
    return found["llmhost_model_decode_steps_total"], found["llmhost_model_decode_passes_total"]


Results = dict[tuple[int, int, str], BenchResult]  # (round, streams, server) -> the wave's figures
Passes = dict[tuple[int, int], float]  # (round, streams) -> llmhost's passes per decode step


def run(rounds: int, waves: list[Wave], max_tokens: int) -> tuple[Results, Passes]:
    compare.SLOTS = SLOTS  # the llmhost launcher reads it for n_parallel
    model_file = compare.model_path()
    binary = compare.wait_llama_server_build(compare.start_llama_server_build())
    if binary is None:
        raise SystemExit("llama-server could not be built (see bench/build_llama_server.sh)")
    results: Results = {}
    packing: Passes = {}
    with ExitStack() as stack:
        bases = {
            LLMHOST: stack.enter_context(compare.llmhost_server(model_file)),
            LLAMA_SERVER: stack.enter_context(compare.llama_server(binary, model_file, SLOTS)),
        }
        for base in bases.values():
            warm_up(base)
        for rnd in range(rounds):
            order = [LLMHOST, LLAMA_SERVER] if rnd % 2 == 0 else [LLAMA_SERVER, LLMHOST]
            for wave in waves:
                for server in order:
                    before = engine_counters(bases[server]) if server == LLMHOST else (0.0, 0.0)
                    r = load(
                        bases[server],
                        concurrency=wave.concurrency,
                        requests=wave.requests,
                        prompt=fresh_prompts(wave.requests, PROMPT_TOKENS),
                        max_tokens=max_tokens,
                    )
                    results[(rnd, wave.concurrency, server)] = r
                    note = ""
                    if server == LLMHOST:
                        steps, passes = (
                            b - a for a, b in zip(before, engine_counters(bases[server]), strict=True)
                        )
                        packing[(rnd, wave.concurrency)] = passes / steps if steps else 0.0
                        note = f", {packing[(rnd, wave.concurrency)]:.2f} passes/step"
                    print(
                        f"  round {rnd + 1} {wave.concurrency:>3} streams {server:<13} {summary(r)}{note}",
                        flush=True,
                    )
    return results, packing


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{min(values):.2f} / **{statistics.median(values):.2f}** / {max(values):.2f}"


def table(results: Results, packing: Passes, rounds: int, waves: list[Wave]) -> list[str]:
    lines = [
        "| streams | llmhost agg tok/s per round | llama-server agg tok/s per round "
        "| aggregate llmhost/peer min / median / max | TTFT p95 llmhost/peer min / median / max "
        "| complete (ok / requests, truncated, 429) | llmhost passes/step per round |",
        "|---:|---|---|---|---|---|---|",
    ]
    for wave in waves:
        own = [results[(r, wave.concurrency, LLMHOST)] for r in range(rounds)]
        peer = [results[(r, wave.concurrency, LLAMA_SERVER)] for r in range(rounds)]
        agg = [a.aggregate_tps / b.aggregate_tps for a, b in zip(own, peer, strict=True) if b.aggregate_tps]
        ttft = [
            a.ttft_p95 / b.ttft_p95
            for a, b in zip(own, peer, strict=True)
            if a.ttft_p95 is not None and b.ttft_p95
        ]
        done = ", ".join(f"{a.n_ok}/{wave.requests} {a.n_truncated} {a.n_429}" for a in own)
        packed = " / ".join(f"{packing.get((r, wave.concurrency), 0.0):.2f}" for r in range(rounds))
        lines.append(
            f"| {wave.concurrency} | {' / '.join(f'{a.aggregate_tps:.1f}' for a in own)} "
            f"| {' / '.join(f'{b.aggregate_tps:.1f}' for b in peer)} | {_spread(agg)} | {_spread(ttft)} "
            f"| {done} | {packed} |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds, the server order alternating (default 3)")
    ap.add_argument("--waves", default="1,8,32,64", help="stream counts per round (default 1,8,32,64)")
    ap.add_argument("--quick", action="store_true", help="short answers and fewer single-stream requests")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    waves = waves_of(args.waves, args.quick)
    max_tokens = 16 if args.quick else MAX_TOKENS
    info = compare.machine_info()
    t0 = time.monotonic()
    results, packing = run(args.rounds, waves, max_tokens)
    lines = [
        f"# llmhost vs llama-server, {SLOTS} slots ({dt.date.today().isoformat()})",
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        f"- {args.rounds} rounds, order alternating; {max_tokens} tokens per request, fresh "
        f"~{PROMPT_TOKENS}-token prompts; ratios are llmhost / llama-server per round",
        "",
        *(table_lines := table(results, packing, args.rounds, waves)),
    ]
    expected = {w.concurrency: w.requests for w in waves}
    incomplete = sorted(
        (rnd + 1, c)
        for (rnd, c, server), r in results.items()
        if server == LLMHOST and (r.n_ok < expected[c] or r.n_truncated or r.n_429 or r.n_errors)
    )
    if incomplete:
        lines += ["", f"llmhost waves that did not complete in full (round, streams): {sorted(incomplete)}"]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{dt.date.today().isoformat()}-scale.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(table_lines))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f}s")
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())

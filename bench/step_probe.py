"""Where a decode step's time goes: inside ``llama_decode`` or in llmhost's own Python around it.

    .venv/bin/python bench/step_probe.py [--streams 8] [--rounds 3] [--tokens 128]

The engine alone (no HTTP), on the embedded Gemma 3 270M with 2 threads and 4096 tokens per slot, as
``bench/compare.py`` runs it: each round submits ``--streams`` greedy requests of ``--tokens`` tokens
with fresh ~64-token prompts and times every ``llama_decode`` call; what is left of the wall time is the
scheduler, sampling, detokenizing and handing the outputs on.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import compare  # bench/ is not a package: run as a script, its folder is on sys.path
import llama_cpp

import llmhost.engine.runner as runner_module
from llmhost.bench import make_prompts
from llmhost.engine.async_engine import Engine
from llmhost.engine.runner import LlamaRunner, RunnerConfig
from llmhost.engine.types import GenerationRequest, RequestOutput, SamplingParams


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    runner = LlamaRunner(
        compare.model_path(), RunnerConfig(n_ctx_slot=4096, n_slots=max(8, args.streams), n_threads=2)
    )
    spent = [0.0, 0]
    decode = llama_cpp.llama_decode

    def timed(ctx: Any, batch: Any) -> int:
        t0 = time.perf_counter()
        rc = int(decode(ctx, batch))
        spent[0] += time.perf_counter() - t0
        spent[1] += 1
        return rc

    runner_module.llama_cpp.llama_decode = timed  # the runner calls it through its module's name
    engine = Engine(runner, name="probe", nice=-10)
    engine.start()
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    try:
        for rnd in range(args.rounds):
            prompts = [
                runner.vocab.tokenize(p) for p in make_prompts(args.streams, 64, start=1000 + rnd * 64)
            ]
            done = threading.Semaphore(0)

            def sink(out: RequestOutput, done: threading.Semaphore = done) -> None:
                if out.finished:
                    done.release()

            spent[0], spent[1] = 0.0, 0
            t0 = time.perf_counter()
            for i, tokens in enumerate(prompts):
                engine.submit(GenerationRequest(f"r{rnd}-{i}", tokens, params), sink)
            for _ in prompts:
                done.acquire()
            wall = time.perf_counter() - t0
            inside, steps = spent[0], int(spent[1])
            print(
                f"round {rnd}: {steps} steps in {wall:.2f} s, llama_decode {1000 * inside / steps:.1f} ms "
                f"a step, the rest {1000 * (wall - inside) / steps:.2f} ms a step "
                f"({100 * inside / wall:.1f}% inside), {args.streams * args.tokens / wall:.1f} tok/s",
                flush=True,
            )
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a decode step costs by slot layout: the runner alone, no HTTP, no scheduler (issue 14's cause).

    .venv/bin/python bench/pass_probe.py [--steps 24]

llama.cpp decodes one run of consecutive slots per pass over the weights (``llmhost/engine/layout.py``);
this times one decode token per sequence for the same number of sequences laid out in one run and
scattered, plus the per-token cost of a prompt chunk, on the embedded Gemma 3 270M with 32 slots of 4096
tokens and 2 threads (the scale benchmark's set-up).
"""

from __future__ import annotations

import argparse
import statistics
import time

import compare  # bench/ is not a package: run as a script, its folder is on sys.path

from llmhost.engine.layout import micro_batches
from llmhost.engine.runner import LlamaRunner, RunnerConfig
from llmhost.engine.types import SamplingParams, ScheduledChunk, SchedulerOutput

LAYOUTS = {
    "8 in slots 0-7": list(range(8)),
    "8 in slots 0, 4, ... 28": list(range(0, 32, 4)),
    "8 in two runs of four": [0, 1, 2, 3, 20, 21, 22, 23],
    "32 in slots 0-31": list(range(32)),
    "24, a hole every 4th slot": [s for s in range(32) if s % 4 != 1],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24, help="timed decode steps per layout (default 24)")
    args = ap.parse_args()
    runner = LlamaRunner(compare.model_path(), RunnerConfig(n_ctx_slot=4096, n_slots=32, n_threads=2))
    params = SamplingParams(temperature=0.0, max_tokens=4000)
    text = "The quick brown fox jumps over the lazy dog. " * 60
    tokens = runner.vocab.tokenize(text)[:512]
    prompt = tokens[:64]
    for name, slots in LAYOUTS.items():
        for slot in slots:
            runner.start_sequence(slot, 0, params)
            runner.step(SchedulerOutput([ScheduledChunk(f"r{slot}", slot, prompt, 0, True)]))
        times = []
        for i in range(args.steps):
            pos = len(prompt) + i
            chunks = [ScheduledChunk(f"r{slot}", slot, [200 + i], pos, True) for slot in slots]
            t0 = time.perf_counter()
            runner.step(SchedulerOutput(chunks))
            times.append(time.perf_counter() - t0)
        passes = len(micro_batches([(slot, 1) for slot in slots], runner.n_ubatch))
        step_ms = statistics.median(times[4:]) * 1000
        print(f"{name:<28} {passes:>2} passes  {step_ms:7.1f} ms/step", flush=True)
        for slot in slots:
            runner.end_sequence(slot)
            runner.clear_slot(slot)
    for n in (64, 256, 512):
        runner.start_sequence(0, 0, params)
        t0 = time.perf_counter()
        runner.step(SchedulerOutput([ScheduledChunk("p", 0, tokens[:n], 0, True)]))
        ms = (time.perf_counter() - t0) * 1000
        print(f"prompt chunk of {n:<3} tokens      {ms:7.1f} ms ({ms / n:.2f} ms/token)")
        runner.end_sequence(0)
        runner.clear_slot(0)
    runner.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""N-gram speculative decoding, side by side: llmhost plain vs ``speculative: "ngram"``, and llama.cpp's
llama-server plain vs its own n-gram speculation (``--spec-type ngram-simple``), in the same run.

    .venv/bin/python bench/spec_compare.py [--rounds 3] [--max-tokens 192]

All servers are up at once on the same GGUF (the embedded Gemma 3 270M Q4_K_M), 2 threads, 4 slots of
4096 tokens. One stream at a time, temperature 0, ``ignore_eos`` (fixed-length answers). Workloads:

  code edit   a Python module, then "the same module, with parse_config renamed": the answer copies it
  rag quote   a passage, then a question answered by quoting the passage
  story       a story of random words; at temperature 0 the base model soon loops (drafts hit)
  sampled     the same kind of story at temperature 1 with a seed: little repeats (drafts miss, which
              is what speculation costs when there is nothing to copy)

Each prompt is new in each round and is sent once with ``max_tokens`` 1 first, so every measured request
starts from the same cached prompt on its server and the figure is decode speed. The configurations run
in a rotated order each round. Reported: decode tok/s per configuration (median and min-max over rounds),
the ratio to the same server's plain decoding, and whether the text equals plain decoding's.
Results go to ``bench/results/<date>-spec.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import compare  # bench/ is not a package: run as a script, its folder is on sys.path
import httpx
from compare import LLAMA_SERVER, MODEL, N_CTX, RESULTS, THREADS

SLOTS = 4

CODE = '''import tomllib
from pathlib import Path


def parse_config(path):
    """Read a TOML config file and return its settings, flattened to dotted keys."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    settings = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for inner, item in value.items():
                settings[f"{key}.{inner}"] = item
        else:
            settings[key] = value
    return settings


def write_config(path, settings):
    """Write flattened settings back as TOML lines, sorted by key."""
    lines = []
    for key, value in sorted(settings.items()):
        lines.append(f"{key} = {value!r}")
    Path(path).write_text("\\n".join(lines) + "\\n")


def merge_configs(paths):
    """Later files win."""
    merged = {}
    for path in paths:
        merged.update(parse_config(path))
    return merged
'''

PASSAGE = (
    "The Rhine rises in the Swiss Alps and flows about 1,230 kilometres to the North Sea. "
    "It forms part of the border between Switzerland and Germany, and later between France and Germany. "
    "Below Basel the river turns north and enters the Upper Rhine Plain, a wide rift valley. "
    "At Bingen it cuts through the Rhenish Slate Mountains in a deep gorge known for its castles. "
    "The river carries more freight than any other waterway in Europe, mostly coal, ore and containers. "
    "In the Netherlands the Rhine splits into several branches that form a large delta with the Meuse."
)


SAMPLED = {"temperature": 1.0, "seed": 7}


def workloads(round_no: int) -> dict[str, str]:
    """The prompts of one round; the round number makes them new to every prompt cache."""
    story, other = compare.fresh_prompts(2, 300)
    return {
        "code edit": f"config_{round_no}.py:\n```python\n{CODE}```\n\n"
        f"config_{round_no}.py with parse_config renamed to load_config:\n```python\n",
        "rag quote": f"Document {round_no}:\n{PASSAGE}\n\nQuestion: Where does the Rhine rise, how long "
        "is it, and what does it carry?\nAnswer, quoting the document sentence by sentence:\n",
        "story": story,
        "sampled": other,
    }


@dataclass(frozen=True, slots=True)
class Config:
    name: str
    server: str  # which running server answers
    body: dict[str, Any] = field(default_factory=dict)  # extra request fields
    plain: str = ""  # the configuration whose text this one should equal


LLMHOST_PLAIN = Config("llmhost", "llmhost")
LLMHOST_NGRAM = Config('llmhost speculative="ngram"', "llmhost", {"speculative": "ngram"}, "llmhost")
LS_PLAIN = Config("llama-server", "ls-plain")
LS_NGRAM = Config("llama-server ngram-simple (n 12, m 48)", "ls-ngram", plain="llama-server")
LS_NGRAM_SHORT = Config("llama-server ngram-simple (n 3, m 16)", "ls-ngram-short", plain="llama-server")
CONFIGS = (LLMHOST_PLAIN, LLMHOST_NGRAM, LS_PLAIN, LS_NGRAM, LS_NGRAM_SHORT)

LS_ARGS = {
    "ls-plain": [],
    "ls-ngram": ["--spec-type", "ngram-simple"],
    "ls-ngram-short": [
        "--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3", "--spec-ngram-simple-size-m", "16",
    ],
}  # fmt: skip


def llama_server(binary: Any, model_file: Any, tag: str) -> Any:
    port = compare.free_port()
    argv = [
        str(binary), "-m", str(model_file), "--alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "-t", str(THREADS), "-tb", str(THREADS), "--parallel", str(SLOTS), "-c", str(SLOTS * N_CTX),
        "--no-webui", *LS_ARGS[tag],
    ]  # fmt: skip
    return compare.running(LLAMA_SERVER, argv, None, "/health", port, f"llama-server-{tag}")


def complete(base: str, prompt: str, max_tokens: int, extra: dict[str, Any]) -> tuple[str, int, float]:
    """One non-streamed completion: its text, completion tokens and wall time."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    body["ignore_eos"] = True
    t0 = time.perf_counter()
    resp = httpx.post(f"{base}/v1/completions", json={**body, **extra}, timeout=600)
    elapsed = time.perf_counter() - t0
    resp.raise_for_status()
    data = resp.json()
    return data["choices"][0]["text"], int(data["usage"]["completion_tokens"]), elapsed


@dataclass
class Cell:
    speeds: list[float] = field(default_factory=list)
    same: list[bool] = field(default_factory=list)


def run(rounds: int, max_tokens: int, log: Callable[[str], None]) -> dict[tuple[str, str], Cell]:
    model_file = compare.model_path()
    binary = compare.wait_llama_server_build(compare.start_llama_server_build())
    if binary is None:
        raise SystemExit("llama-server could not be built")
    compare.SLOTS = SLOTS
    cells: dict[tuple[str, str], Cell] = {}
    with ExitStack() as stack:
        bases = {"llmhost": stack.enter_context(compare.llmhost_server(model_file))}
        for tag in LS_ARGS:
            bases[tag] = stack.enter_context(llama_server(binary, model_file, tag))
        for base in bases.values():
            compare.warm_up(base)
        for r in range(rounds):
            prompts = workloads(r)
            order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
            for work, prompt in prompts.items():
                for base in bases.values():
                    complete(base, prompt, 1, {})  # the prompt is in the cache for what follows
                texts: dict[str, str] = {}
                for config in order:
                    extra = {**config.body, **(SAMPLED if work == "sampled" else {})}
                    text, n, elapsed = complete(bases[config.server], prompt, max_tokens, extra)
                    texts[config.name] = text
                    cell = cells.setdefault((work, config.name), Cell())
                    cell.speeds.append(n / elapsed)
                    log(f"round {r + 1} {work:10} {config.name:40} {n / elapsed:6.1f} tok/s ({n} tokens)")
                log(f"round {r + 1} {work}: llmhost's text begins {texts[LLMHOST_PLAIN.name][:160]!r}")
                for config in order:
                    if config.plain:
                        cells[(work, config.name)].same.append(texts[config.name] == texts[config.plain])
    return cells


def table(cells: dict[tuple[str, str], Cell]) -> str:
    works = list(dict.fromkeys(work for work, _ in cells))
    lines = [
        "| workload | configuration | decode tok/s, median (min-max) | vs the same server's plain | "
        "text = plain's |",
        "|---|---|---|---|---|",
    ]
    for work in works:
        for config in CONFIGS:
            cell = cells[(work, config.name)]
            med = statistics.median(cell.speeds)
            speed = f"{med:.1f} ({min(cell.speeds):.1f}-{max(cell.speeds):.1f})"
            ratio = same = ""
            if config.plain:
                ratio = f"{med / statistics.median(cells[(work, config.plain)].speeds):.2f}x"
                same = f"{sum(cell.same)}/{len(cell.same)}"
            lines.append(f"| {work} | {config.name} | {speed} | {ratio} | {same} |")
    ours = [
        statistics.median(cells[(w, LLMHOST_NGRAM.name)].speeds)
        / max(
            statistics.median(cells[(w, LS_NGRAM.name)].speeds),
            statistics.median(cells[(w, LS_NGRAM_SHORT.name)].speeds),
        )
        for w in works
    ]
    lines.append("")
    lines.append(
        "llmhost ngram / llama-server's faster ngram setting: "
        + ", ".join(f"{w} {x:.2f}x" for w, x in zip(works, ours, strict=True))
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=192)
    args = ap.parse_args()
    cells = run(args.rounds, args.max_tokens, lambda line: print(line, flush=True))
    out = table(cells)
    print(out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{dt.date.today().isoformat()}-spec.md"
    info = compare.machine_info()
    head = [f"# n-gram speculative decoding, {dt.datetime.now():%Y-%m-%d %H:%M}", ""]
    head += [f"- {k}: {v}" for k, v in info.items()]
    head += [f"- {args.rounds} rounds, {args.max_tokens} tokens per request, one stream, temperature 0", ""]
    path.write_text("\n".join(head) + "\n" + out + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

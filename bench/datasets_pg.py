"""Dataset search on PostgreSQL against SQLite, side by side (issue 17: datasets on ``database_url``).

    .venv/bin/python bench/datasets_pg.py [--sizes 1000,10000,50000] [--queries 50]

For each size, one dataset of that many chunks (synthetic unit vectors of 384 dimensions, 60 words of a
Zipf-distributed vocabulary per chunk, written through each store's own ``put_document`` in documents of
50 chunks) is built in a SQLite store (sqlite-vec + FTS5) and in a PostgreSQL one (a real PostgreSQL 15
started on loopback by tests/postgres.py: float32 vectors ranked with numpy, ``tsvector`` + GIN). Then
``--queries`` searches, alternating between the stores, each the two halves of a hybrid search: the 20
nearest vectors and the 20 best text matches of three words. Prints p50 / p95 per store and size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmhost.apps.datasets.service import Store, open_store  # noqa: E402
from llmhost.apps.datasets.store import StoredChunk  # noqa: E402
from tests.postgres import start_postgres  # noqa: E402

DIM = 384
PER_DOC = 50
WORDS = 60
POOL = 20


def fill(store: Store, size: int, rng: np.random.Generator, vocab: list[str], freq: np.ndarray) -> float:
    started = time.perf_counter()
    store.create("bench", "", "synthetic", 256, 32)
    for doc, first in enumerate(range(0, size, PER_DOC)):
        n = min(PER_DOC, size - first)
        vectors = rng.standard_normal((n, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        texts = [" ".join(vocab[i] for i in row) for row in rng.choice(len(vocab), size=(n, WORDS), p=freq)]
        chunks = [StoredChunk(0, len(t), t, v) for t, v in zip(texts, vectors, strict=True)]
        store.put_document("bench", f"doc{doc}.txt", "txt", 0, "", chunks)
    return time.perf_counter() - started


def search(store: Store, rng: np.random.Generator, vocab: list[str]) -> float:
    info = store.get("bench")
    started = time.perf_counter()
    store.vector_search(info.id, DIM, rng.standard_normal(DIM).astype(np.float32), POOL)
    store.text_search([info.id], " ".join(rng.choice(vocab[:2000], size=3)), POOL)
    return (time.perf_counter() - started) * 1000


def main(sizes: list[int], queries: int) -> None:
    rng = np.random.default_rng(7)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=int(rng.integers(3, 10)))) for _ in range(20_000)]
    freq = 1.0 / np.arange(1, len(vocab) + 1)
    freq /= freq.sum()
    server = start_postgres()
    try:
        for size in sizes:
            folder = Path(tempfile.mkdtemp(prefix="llmhost-ds-"))
            stores: dict[str, Store] = {
                "sqlite": open_store(str(folder / "datasets.db")),
                "postgresql": open_store(server.new_database()),
            }
            for name, store in stores.items():
                print(f"{size:7d} chunks  {name:<10} built in {fill(store, size, rng, vocab, freq):6.1f} s")
            took: dict[str, list[float]] = {name: [] for name in stores}
            for i in range(queries):
                for name in list(stores)[i % 2 :] + list(stores)[: i % 2]:  # alternate who goes first
                    took[name].append(search(stores[name], rng, vocab))
            for name, ms in took.items():
                ms.sort()
                p95 = ms[max(0, round(0.95 * len(ms)) - 1)]
                p50 = statistics.median(ms)
                print(f"{size:7d} chunks  {name:<10} search p50 {p50:7.1f} ms  p95 {p95:7.1f} ms")
            for store in stores.values():
                store.close()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    main([int(s) for s in args.sizes.split(",")], args.queries)

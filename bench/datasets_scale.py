"""Datasets at scale: search latency over 5,000 datasets and 1,000,000 chunks, and the ingest rate with
real embeddings.

``index`` (default): builds a store through its own write path (``DatasetStore.put_document``, one
transaction a document of 50 chunks) with synthetic 384-dimensional unit vectors (seeded) and synthetic
text (a 20,000-word vocabulary drawn with Zipf frequencies), dataset sizes skewed (a few with tens of
thousands of chunks, most with a hundred or so); then times hybrid searches (``Datasets.rank``: the
k-nearest chunks of the dataset's vec0 partition + BM25 over its FTS5 rows + reciprocal-rank fusion +
the citations' rows) for random datasets and for the largest ones, and reports p50 / p95 / max, the
build time and the size on disk. The query's vector is synthetic (a stored vector plus noise); a real
query adds one embedding (all-MiniLM, one input: ~6 ms on the 2-core VM, see README).

``ingest``: a service with the embedded all-MiniLM ingests real text (this repository's Markdown and
Python files, as documents) through the pipeline: documents, chunks and megabytes a second.

    .venv/bin/python bench/datasets_scale.py index --datasets 5000 --chunks 1000000 --queries 500
    .venv/bin/python bench/datasets_scale.py ingest --limit 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmhost.apps.datasets import Datasets, DatasetStore, StoredChunk  # noqa: E402
from llmhost.config import load_settings  # noqa: E402
from llmhost.core.types import RequestContext  # noqa: E402
from llmhost.security.auth import OWNER  # noqa: E402
from llmhost.service import Service  # noqa: E402

DIM = 384
CHUNKS_PER_DOC = 50
WORDS_PER_CHUNK = 60


def _sizes(n_datasets: int, n_chunks: int, rng: np.random.Generator) -> list[int]:
    weights = 1.0 / np.power(np.arange(n_datasets) + 20.0, 1.15)
    sizes = np.maximum(1, np.round(weights / weights.sum() * n_chunks)).astype(int)
    sizes[0] += n_chunks - int(sizes.sum())
    rng.shuffle(sizes)
    return [int(s) for s in sizes]


def _vocab(rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=int(rng.integers(3, 10)))) for _ in range(20_000)]
    freq = 1.0 / np.arange(1, len(words) + 1)
    return words, freq / freq.sum()


def _percentiles(ms: list[float]) -> str:
    ms = sorted(ms)
    p95 = ms[max(0, round(0.95 * len(ms)) - 1)]
    return f"p50 {statistics.median(ms):6.1f} ms   p95 {p95:6.1f} ms   max {ms[-1]:6.1f} ms"


def index(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(7)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="llmhost-ds-"))
    path = folder / "datasets.db"
    fresh = not path.exists()
    store = DatasetStore(path)
    sizes = _sizes(args.datasets, args.chunks, rng)
    words, freq = _vocab(rng)
    if fresh:
        started = time.perf_counter()
        done = 0
        for d, size in enumerate(sizes):
            name = f"ds{d:05d}"
            store.create(name, "", "synthetic", 256, 32)
            for doc, first in enumerate(range(0, size, CHUNKS_PER_DOC)):
                n = min(CHUNKS_PER_DOC, size - first)
                vectors = rng.standard_normal((n, DIM)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                picks = rng.choice(len(words), size=(n, WORDS_PER_CHUNK), p=freq)
                texts = [" ".join(words[i] for i in row) for row in picks]
                chunks = [StoredChunk(0, len(t), t, v) for t, v in zip(texts, vectors, strict=True)]
                store.put_document(name, f"doc{doc}.txt", "txt", sum(len(t) for t in texts), "", chunks)
            done += size
            if d % 500 == 0:
                rate = done / (time.perf_counter() - started)
                print(f"  {d:5d} datasets, {done:8d} chunks, {rate:7.0f} chunks/s", flush=True)
        build = time.perf_counter() - started
        print(
            f"built {args.datasets} datasets, {sum(sizes)} chunks in {build:.0f} s"
            f" ({sum(sizes) / build:.0f} chunks/s)"
        )
    size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    print(f"store: {path} ({size_mb:.0f} MB on disk)")
    service = Datasets(store, None, default_embedding_model="synthetic")  # type: ignore[arg-type]
    infos = {i.name: i for i in store.all()}
    by_size = sorted(infos.values(), key=lambda i: -i.chunks)

    def timed(names: list[str]) -> list[float]:
        out = []
        for name in names:
            info = infos[name]
            probe = store.vector_search(info.id, DIM, rng.standard_normal(DIM).astype(np.float32), 1)
            base = store._db.execute(
                f"SELECT embedding FROM vec_chunks_{DIM} WHERE rowid = ?", (probe[0][0],)
            ).fetchone()[0]
            vector = (
                np.frombuffer(base, dtype=np.float32) + rng.standard_normal(DIM).astype(np.float32) * 0.05
            )
            query = " ".join(words[i] for i in rng.choice(len(words), size=4, p=freq))
            t = time.perf_counter()
            hits = service.rank([info], {"synthetic": vector}, query, 5)
            out.append((time.perf_counter() - t) * 1000)
            assert hits, name
        return out

    names = list(infos)
    random_names = [names[int(i)] for i in rng.integers(0, len(names), size=args.queries)]
    timed(random_names[:20])  # warm the page cache a little
    print(f"random datasets ({args.queries} hybrid searches, k=5):  {_percentiles(timed(random_names))}")
    for label, group in (("largest 10", by_size[:10]), ("median-size 10", by_size[len(by_size) // 2 :][:10])):
        chunks = f"{group[-1].chunks}-{group[0].chunks} chunks"
        ms = timed([i.name for i in group for _ in range(10)])
        print(f"{label} datasets ({chunks}), 100 searches:  {_percentiles(ms)}")
    store.close()


def ingest(args: argparse.Namespace) -> None:
    files = sorted(p for ext in ("*.md", "*.py") for p in ROOT.rglob(ext) if ".venv" not in p.parts)[
        : args.limit
    ]
    data_dir = Path(tempfile.mkdtemp(prefix="llmhost-ingest-"))
    threads = args.threads or os.cpu_count() or 2
    settings = load_settings(None, data_dir=data_dir, default_model="", engine={"n_threads": threads})

    async def main() -> None:
        service = Service(settings)
        await service.startup(preload=False)
        ctx = RequestContext(principal=OWNER, door="bench")
        await service.datasets.create("repo")
        await service.datasets.add_document(ctx, "repo", "warm.txt", b"warm up the embedding model")
        total_bytes, total_chunks = 0, 0
        started = time.perf_counter()
        for path in files:
            data = path.read_bytes()
            doc = await service.datasets.add_document(
                ctx, "repo", str(path.relative_to(ROOT)), data, fmt="txt"
            )
            total_bytes += len(data)
            total_chunks += doc.chunks
        took = time.perf_counter() - started
        print(
            f"ingested {len(files)} documents, {total_bytes / 1e6:.2f} MB, {total_chunks} chunks in"
            f" {took:.1f} s: {len(files) / took:.1f} docs/s, {total_chunks / took:.1f} chunks/s,"
            f" {total_bytes / 1e6 / took:.3f} MB/s ({threads} threads)"
        )
        service.close()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode")
    p_index = sub.add_parser("index")
    p_index.add_argument("--datasets", type=int, default=5000)
    p_index.add_argument("--chunks", type=int, default=1_000_000)
    p_index.add_argument("--queries", type=int, default=500)
    p_index.add_argument("--dir", help="Where the store is built (reused when it exists).")
    p_ingest = sub.add_parser("ingest")
    p_ingest.add_argument("--limit", type=int, default=200, help="How many of the repository's files.")
    p_ingest.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.mode == "ingest":
        ingest(args)
    else:
        if args.mode is None:
            args = p_index.parse_args([])
        index(args)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    print(f"commit {commit.stdout.strip()}, {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()

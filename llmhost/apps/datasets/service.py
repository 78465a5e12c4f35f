"""``Datasets``: create, fill and search document collections, with embeddings through the pipeline.

add_document: bytes -> text (loaders) -> chunks by the embedding model's tokens (chunking)
              -> vectors: Pipeline.embed as the caller, 64 chunks a request (keys, limits, usage,
                 audit apply) -> one transaction in the store (a re-ingest replaces the old chunks)
search:       the query's vector (per embedding model) -> k nearest per dataset (vec0)
              + BM25 over the datasets' chunks (FTS5) -> reciprocal-rank fusion (k = 60)
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llmhost.apps.datasets.chunking import chunk_text
from llmhost.apps.datasets.loaders import extract_text, format_of
from llmhost.apps.datasets.pg_store import PostgresDatasetStore
from llmhost.apps.datasets.store import DatasetInfo, DatasetStore, DocumentInfo, StoredChunk
from llmhost.core.pipeline import Pipeline
from llmhost.core.types import EmbedRequest, RequestContext
from llmhost.errors import RequestError
from llmhost.storage.db import Database

__all__ = ["Datasets", "Hit", "SearchMode", "Store", "open_store"]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EMBED_BATCH = 64
RRF_K = 60
MAX_K = 100
SearchMode = Literal["hybrid", "vector", "text"]
# ``count(model, words)``: each word's token count in the model's vocabulary; ``max_tokens(model)``: the
# longest input it embeds at once. Both None for a model this machine does not run (an estimate then).
TokenCounter = Callable[[str, Sequence[str]], Awaitable[list[int] | None]]
Store = DatasetStore | PostgresDatasetStore


def open_store(target: str) -> Store:
    """The datasets' store at ``target``: a ``postgresql://`` URL (``database_url``), else a SQLite file
    (with sqlite-vec and FTS5)."""
    if target.startswith(("postgresql://", "postgres://")):
        return PostgresDatasetStore(Database(target))
    return DatasetStore(Path(target))


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result, with its citation: the chunk's document and character offsets."""

    dataset: str
    document: str
    document_id: str
    chunk: int
    start: int
    end: int
    text: str
    score: float
    vector_rank: int | None
    text_rank: int | None

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


def _estimate(words: Sequence[str]) -> list[int]:
    return [max(1, math.ceil(len(w) / 4)) for w in words]


class Datasets:
    def __init__(
        self,
        store: Store,
        pipeline: Pipeline,
        *,
        default_embedding_model: str,
        count_tokens: TokenCounter | None = None,
        chunk_tokens: int = 256,
        chunk_overlap: int = 32,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.default_embedding_model = default_embedding_model
        self.count_tokens = count_tokens
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap

    # ----- datasets ----------------------------------------------------------------------------------
    async def create(
        self,
        name: str,
        *,
        description: str = "",
        embedding_model: str | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
    ) -> DatasetInfo:
        if not NAME.match(name):
            raise RequestError("a dataset name is 1-64 letters, digits, '.', '_' or '-'", param="name")
        tokens = chunk_tokens if chunk_tokens is not None else self.chunk_tokens
        overlap = chunk_overlap if chunk_overlap is not None else self.chunk_overlap
        if not 16 <= tokens <= 8192:
            raise RequestError("chunk_tokens must be between 16 and 8192", param="chunk_tokens")
        if not 0 <= overlap < tokens:
            raise RequestError(
                "chunk_overlap must be at least 0 and less than chunk_tokens", param="chunk_overlap"
            )
        model = embedding_model or self.default_embedding_model
        if not model:
            raise RequestError(
                "no embedding model: give embedding_model or set [embeddings] model", "embedding_model"
            )
        return await asyncio.to_thread(self.store.create, name, description, model, tokens, overlap)

    def get(self, name: str) -> DatasetInfo:
        return self.store.get(name)

    def exists(self, name: str) -> bool:
        return self.store.exists(name)

    async def all(self) -> list[DatasetInfo]:
        return await asyncio.to_thread(self.store.all)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self.store.delete, name)

    # ----- documents ---------------------------------------------------------------------------------
    async def add_document(
        self, ctx: RequestContext, dataset: str, name: str, data: bytes, *, fmt: str | None = None
    ) -> DocumentInfo:
        info = await asyncio.to_thread(self.store.get, dataset)
        if not name or len(name) > 255 or not name.isprintable():
            raise RequestError("a document name is 1-255 printable characters", param="name")
        kind = format_of(name, fmt)
        text = await asyncio.to_thread(extract_text, data, kind)
        sizes: dict[str, int] | None = None
        if self.count_tokens is not None:
            distinct = sorted(set(text.split()))
            found = await self.count_tokens(info.embedding_model, distinct)
            sizes = dict(zip(distinct, found, strict=True)) if found is not None else None

        def count(words: Sequence[str]) -> list[int]:
            return [sizes[w] for w in words] if sizes is not None else _estimate(words)

        pieces = await asyncio.to_thread(chunk_text, text, count, info.chunk_tokens, info.chunk_overlap)
        texts = [text[c.start : c.end] for c in pieces]
        vectors = await self._embed(ctx, info.embedding_model, texts)
        chunks = [StoredChunk(c.start, c.end, t, v) for c, t, v in zip(pieces, texts, vectors, strict=True)]
        digest = hashlib.sha256(data).hexdigest()
        return await asyncio.to_thread(
            self.store.put_document, dataset, name, kind, len(data), digest, chunks
        )

    async def documents(self, dataset: str) -> list[DocumentInfo]:
        return await asyncio.to_thread(self.store.documents, dataset)

    async def delete_document(self, dataset: str, ref: str) -> DocumentInfo:
        return await asyncio.to_thread(self.store.delete_document, dataset, ref)

    async def _embed(self, ctx: RequestContext, model: str, texts: Sequence[str]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(texts), EMBED_BATCH):
            part = tuple(texts[start : start + EMBED_BATCH])
            child = RequestContext(principal=ctx.principal, door=ctx.door)
            result = await self.pipeline.embed(child, EmbedRequest(model, part))
            out += [_unit(v) for v in result.vectors]
        return out

    # ----- search ------------------------------------------------------------------------------------
    async def search(
        self, ctx: RequestContext, names: Sequence[str], query: str, k: int = 5, mode: SearchMode = "hybrid"
    ) -> list[Hit]:
        """The ``k`` best chunks of ``names`` for ``query``, fused over vector and text ranks."""
        if not query.strip():
            raise RequestError("query must not be empty", param="query")
        if not 1 <= k <= MAX_K:
            raise RequestError(f"k must be between 1 and {MAX_K}", param="k")
        infos = [await asyncio.to_thread(self.store.get, n) for n in dict.fromkeys(names)]
        vectors: dict[str, np.ndarray] = {}
        if mode in ("hybrid", "vector"):
            for model in {i.embedding_model for i in infos if i.dim is not None}:
                (vectors[model],) = await self._embed(ctx, model, [query])
        return await asyncio.to_thread(self.rank, infos, vectors, query, k, mode)

    def rank(
        self,
        infos: Sequence[DatasetInfo],
        vectors: dict[str, np.ndarray],
        query: str,
        k: int,
        mode: SearchMode = "hybrid",
    ) -> list[Hit]:
        """The search itself, given the query's vector per embedding model (blocking: SQLite)."""
        pool = max(k * 4, 20)
        ranked: list[list[int]] = []
        if mode in ("hybrid", "vector"):
            for model, vector in vectors.items():
                found: list[tuple[int, float]] = []
                for info in infos:
                    if info.embedding_model == model and info.dim is not None:
                        found += self.store.vector_search(info.id, info.dim, vector, pool)
                ranked.append([cid for cid, _ in sorted(found, key=lambda x: x[1])[:pool]])
        text_ids: list[int] = []
        if mode in ("hybrid", "text"):
            text_ids = [cid for cid, _ in self.store.text_search([i.id for i in infos], query, pool)]
        return self._fuse(_interleave(ranked), text_ids, k)

    def _fuse(self, vector_ids: list[int], text_ids: list[int], k: int) -> list[Hit]:
        scores: dict[int, float] = {}
        vrank = {cid: r for r, cid in enumerate(vector_ids, start=1)}
        trank = {cid: r for r, cid in enumerate(text_ids, start=1)}
        for cid in {*vrank, *trank}:
            scores[cid] = sum(1.0 / (RRF_K + ranks[cid]) for ranks in (vrank, trank) if cid in ranks)
        best = sorted(scores, key=lambda c: (-scores[c], vrank.get(c, 1 << 30)))[:k]
        rows = self.store.chunks_by_id(best)
        return [
            Hit(
                dataset=rows[c][0],
                document=rows[c][1],
                document_id=f"doc_{rows[c][2]}",
                chunk=int(rows[c][3]),
                start=int(rows[c][4]),
                end=int(rows[c][5]),
                text=str(rows[c][6]),
                score=round(scores[c], 6),
                vector_rank=vrank.get(c),
                text_rank=trank.get(c),
            )
            for c in best
            if c in rows
        ]

    def close(self) -> None:
        self.store.close()


def _unit(vector: Sequence[float]) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def _interleave(groups: list[list[int]]) -> list[int]:
    """Ranked lists from several embedding models, merged rank by rank (distances are not comparable)."""
    out: list[int] = []
    for rank in range(max((len(g) for g in groups), default=0)):
        out += [g[rank] for g in groups if rank < len(g)]
    return out

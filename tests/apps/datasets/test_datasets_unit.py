"""Chunking (token budgets, overlap, exact offsets), loaders, and the store: fused search order,
atomic re-ingest under a concurrent reader, deletes that leave no index rows behind. The store tests run
on SQLite (sqlite-vec + FTS5) and on PostgreSQL (``database_url``)."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmhost.apps.datasets.chunking import chunk_text
from llmhost.apps.datasets.loaders import extract_text, format_of
from llmhost.apps.datasets.pg_store import PostgresDatasetStore, tsquery
from llmhost.apps.datasets.service import open_store
from llmhost.apps.datasets.store import DatasetStore, StoredChunk, fts_query
from llmhost.errors import ConflictError, NotFoundError, RequestError


def _count(words: list[str]) -> list[int]:
    return [len(w) for w in words]  # one "token" per character: easy to reason about


def test_chunks_keep_within_the_budget_overlap_and_point_into_the_text() -> None:
    text = "aa bbb cccc d eeeee ff ggg hhhh i jjjjj"
    chunks = chunk_text(text, _count, chunk_tokens=8, overlap=3)
    assert all(c.tokens <= 8 for c in chunks)
    assert text[chunks[0].start : chunks[0].end] == "aa bbb"
    for a, b in itertools.pairwise(chunks):
        assert b.start <= a.end  # each chunk starts inside (or right at the end of) the previous one
    assert chunks[-1].end == len(text)
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_a_word_longer_than_a_chunk_is_cut() -> None:
    text = "x" * 50
    chunks = chunk_text(text, _count, chunk_tokens=16, overlap=0)
    assert len(chunks) >= 4 and all(c.tokens <= 16 for c in chunks)
    assert "".join(text[c.start : c.end] for c in chunks) == text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet="abcdé漢", min_size=1, max_size=12), min_size=1, max_size=60),
    st.integers(4, 40),
    st.integers(0, 10),
)
def test_chunks_cover_every_word(words: list[str], size: int, overlap: int) -> None:
    overlap = min(overlap, size - 1)
    text = " ".join(words)
    chunks = chunk_text(text, _count, chunk_tokens=size, overlap=overlap)
    covered = set()
    for c in chunks:
        assert 0 <= c.start < c.end <= len(text)
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if ch != " ")


def test_loaders() -> None:
    html = b"<html><style>p{}</style><body><p>Hello &amp; welcome</p><script>x()</script></body></html>"
    assert extract_text(html, "html") == "Hello & welcome"
    assert extract_text(b"a,b\n1,2\n", "csv") == "a: 1\nb: 2"
    assert extract_text(b'{"content": "one"}\n\n["two", {"x": "three"}]\n', "jsonl") == "one\n\ntwo\nthree"
    assert format_of("Guide.PDF", None) == "pdf" and format_of("x.unknown", None) == "txt"
    with pytest.raises(RequestError):
        format_of("x", "docx")
    for data, fmt in [
        (b"\xff\xfe", "txt"),
        (b"a\x00b", "txt"),
        (b"%PDF-1.4 broken", "pdf"),
        (b"<p></p>", "html"),
    ]:
        with pytest.raises(RequestError):
            extract_text(data, fmt)


def test_fts_queries_carry_no_syntax_and_name_their_datasets() -> None:
    q = fts_query([3], 'Reset AND "router" OR NEAR(x')
    assert q == '"d3xreset" OR "d3xand" OR "d3xrouter" OR "d3xor" OR "d3xnear" OR "d3xx"'
    assert fts_query([1, 2], "Café") == '"d1xcafe" OR "d2xcafe"'  # accents folded, both datasets
    assert fts_query([1], "?!") is None and fts_query([], "x") is None
    assert tsquery("Reset & !router | <-> x:*") == "reset | router | x"  # PostgreSQL: words only
    assert tsquery("Café café") == "cafe" and tsquery("?!") is None


def _vec(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _chunks(texts: list[str], seed: int) -> list[StoredChunk]:
    return [StoredChunk(0, len(t), t, _vec(seed + i)) for i, t in enumerate(texts)]


def test_store_create_replace_delete(db_target: str) -> None:
    store = open_store(db_target)
    info = store.create("a", "", "m", 64, 8)
    with pytest.raises(ConflictError):
        store.create("a", "", "m", 64, 8)
    store.put_document("a", "doc", "txt", 3, "", _chunks(["one", "two"], 0))
    assert store.get("a").chunks == 2 and store.get("a").dim == 8
    store.put_document("a", "doc", "txt", 3, "", _chunks(["three"], 10))
    assert store.get("a").chunks == 1 and store.get("a").documents == 1
    assert store.text_search([info.id], "one", 5) == []
    assert len(store.text_search([info.id], "three", 5)) == 1
    nearest = store.vector_search(info.id, 8, _vec(10), 5)
    assert len(nearest) == 1 and nearest[0][1] < 1e-5
    with pytest.raises(RequestError):  # a different width than the dataset's
        store.put_document("a", "other", "txt", 1, "", [StoredChunk(0, 1, "x", _vec(1, dim=4))])
    store.delete("a")
    with pytest.raises(NotFoundError):
        store.get("a")
    if isinstance(store, DatasetStore):
        db = store._db
        assert db.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM vec_chunks_8").fetchone()[0] == 0
        fts = "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'd1xthree'"
        assert db.execute(fts).fetchone()[0] == 0
    else:
        assert isinstance(store, PostgresDatasetStore)
        assert store._db.query("SELECT count(*) FROM dataset_chunks") == [(0,)]
        assert store._db.query("SELECT count(*) FROM dataset_documents") == [(0,)]
    store.close()


def test_a_reader_never_sees_half_a_re_ingest(db_target: str) -> None:
    store = open_store(db_target)
    reader = open_store(db_target)  # another connection, as another request's (or instance's)
    info = store.create("a", "", "m", 64, 8)
    old = [f"old{i} shared" for i in range(30)]
    new = [f"new{i} shared" for i in range(5)]
    store.put_document("a", "doc", "txt", 1, "", _chunks(old, 0))
    seen: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            found = reader.text_search([info.id], "shared", 100)
            seen.add(len(found))

    thread = threading.Thread(target=read)
    thread.start()
    for n in range(20):
        store.put_document("a", "doc", "txt", 1, "", _chunks(new if n % 2 == 0 else old, n))
    stop.set()
    thread.join()
    assert seen <= {len(old), len(new)}, seen
    store.close()
    reader.close()

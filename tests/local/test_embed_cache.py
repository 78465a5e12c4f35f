"""The embedding cache (llmhost.local.embed_cache): LRU bound and TTL in memory and in SQLite, vectors
kept exactly (float32), and over a live server: a repeated workload is served mostly from the cache
(hit ratio in /metrics above 70%), with the same vectors and token counts as the computed ones, and a
new model file under the same name never gets the old file's vectors."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmhost.local import embed_cache
from llmhost.local.embed_cache import MemoryCache, SqliteCache, cache_key, make_cache, pack, unpack
from tests.conftest import TINY, ServerFactory
from tests.tiny_gguf import write_tiny_llama_gguf


def _entry(x: float, n: int = 3) -> tuple[bytes, int]:
    return pack([x, -x, 0.5]), n


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    clock = _Clock()
    monkeypatch.setattr(embed_cache.time, "monotonic", clock)
    monkeypatch.setattr(embed_cache.time, "time", clock)

    def build(max_entries: int = 100, ttl: float = 60.0) -> MemoryCache | SqliteCache:
        if request.param == "memory":
            return MemoryCache(max_entries, ttl)
        cache = SqliteCache(tmp_path / "embeddings.db", max_entries, ttl)
        cache._TRIM_EVERY = 1  # type: ignore[misc]
        return cache

    build.clock = clock  # type: ignore[attr-defined]
    return build


def test_keys_tell_apart_models_texts_and_token_ids() -> None:
    keys = {
        cache_key("sha256:a", "hello"),
        cache_key("sha256:b", "hello"),
        cache_key("sha256:a", "hello "),
        cache_key("sha256:a", [1, 2]),
        cache_key("sha256:a", [12]),
        cache_key("sha256:a", "1,2"),
    }
    assert len(keys) == 6
    assert cache_key("sha256:a", "hello") == cache_key("sha256:a", "hello")


def test_vectors_come_back_exactly(make) -> None:  # type: ignore[no-untyped-def]
    cache = make()
    vector = unpack(pack([0.1, 0.2, -0.3]))  # float32 values
    cache.put_many([(b"k", (pack(vector), 7))])
    (blob, n_tokens) = cache.get_many([b"k"])[0]
    assert (unpack(blob), n_tokens) == (vector, 7)


def test_hits_misses_and_the_lru_bound(make) -> None:  # type: ignore[no-untyped-def]
    cache = make(max_entries=3)
    cache.put_many([(b"a", _entry(1)), (b"b", _entry(2)), (b"c", _entry(3))])
    make.clock.now += 1
    assert set(cache.get_many([b"a", b"x"])) == {0}  # a is now the most recently used
    make.clock.now += 1
    cache.put_many([(b"d", _entry(4))])
    assert set(cache.get_many([b"a", b"b", b"c", b"d"])) == {0, 2, 3}  # b, least recently used, went
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (4, 2, 3)
    assert stats.hit_ratio == pytest.approx(4 / 6)
    cache.close()


def test_a_vector_expires_after_the_ttl(make) -> None:  # type: ignore[no-untyped-def]
    cache = make(ttl=10.0)
    cache.put_many([(b"a", _entry(1))])
    make.clock.now += 9
    assert 0 in cache.get_many([b"a"])
    make.clock.now += 2  # 11 s after it was computed, though read at 9 s
    assert cache.get_many([b"a"]) == {}
    cache.close()


def test_the_sqlite_cache_outlives_its_process(tmp_path: Path) -> None:
    first = SqliteCache(tmp_path / "e.db", 10, 60.0)
    first.put_many([(b"a", _entry(1))])
    first.close()
    second = make_cache("sqlite", tmp_path / "e.db", 10, 60.0)
    assert second is not None
    assert second.get_many([b"a"])[0] == _entry(1)
    second.close()
    assert make_cache("off", tmp_path / "e.db", 10, 60.0) is None


def _metric(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_repeated_workload_is_served_from_the_cache(make_server: ServerFactory, kind: str) -> None:
    live = make_server(embeddings={"cache": kind})
    texts = [f"document {i}: the cat sat on mat number {i}" for i in range(20)]
    rng = random.Random(7)
    first: dict[str, tuple[list[float], int]] = {}
    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        for _ in range(100):
            text = rng.choice(texts)
            r = client.post("/v1/embeddings", json={"model": TINY, "input": text})
            assert r.status_code == 200, r.text
            body = r.json()
            answer = (body["data"][0]["embedding"], body["usage"]["prompt_tokens"])
            assert first.setdefault(text, answer) == answer  # a hit is exactly the computed answer
        seen = next(iter(first))
        mixed = client.post("/v1/embeddings", json={"model": TINY, "input": [seen, "a brand new text"]})
    assert mixed.status_code == 200
    assert mixed.json()["data"][0]["embedding"] == first[seen][0]
    hits = _metric(live.base_url, "llmhost_embedding_cache_hits_total")
    misses = _metric(live.base_url, "llmhost_embedding_cache_misses_total")
    assert misses == len(first) + 1
    assert hits == 101 - len(first)
    assert _metric(live.base_url, "llmhost_embedding_cache_hit_ratio") > 0.7


def test_a_new_file_under_the_same_name_is_not_served_old_vectors(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    live = make_server()
    r1 = httpx.post(f"{live.base_url}/v1/embeddings", json={"model": TINY, "input": "same text"}).json()
    other = write_tiny_llama_gguf(tmp_path / "other.gguf", seed=99, context_length=2048)
    live.service.store.import_file(other, TINY)  # re-points the name at another file
    r2 = httpx.post(f"{live.base_url}/v1/embeddings", json={"model": TINY, "input": "same text"}).json()
    assert r1["data"][0]["embedding"] != r2["data"][0]["embedding"]
    assert _metric(live.base_url, "llmhost_embedding_cache_hits_total") == 0


def test_the_cache_can_be_turned_off(make_server: ServerFactory) -> None:
    live = make_server(embeddings={"cache": "off"})
    for _ in range(2):
        assert (
            httpx.post(f"{live.base_url}/v1/embeddings", json={"model": TINY, "input": "x"}).status_code
            == 200
        )
    assert "llmhost_embedding_cache_hits_total" not in httpx.get(f"{live.base_url}/metrics").text

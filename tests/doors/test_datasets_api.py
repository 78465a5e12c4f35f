"""Datasets over HTTP on a live server with the embedded all-MiniLM: create, upload (JSON and multipart,
every format), hybrid search with exact citations, re-ingest, deletes, every bad input a 4xx in OpenAI's
envelope with nothing stored, scopes, and retrieval quality on a fixed corpus (recall@5)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, make_service, make_settings, start_server
from tests.security.helpers import make_key

CORPUS = json.loads((Path(__file__).parent.parent / "data" / "retrieval_corpus.json").read_text("utf-8"))


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose page shows ``text`` in Helvetica (by hand: pypdf reads text, not writes it)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("datasets") / "data")
    service = make_service(settings, tiny_model_path)
    server = start_server(settings, service)
    yield server
    server.stop()
    service.close()


def _post(live: LiveServer, path: str, **kw: Any) -> httpx.Response:
    return httpx.post(f"{live.base_url}{path}", timeout=120, **kw)


def _new(live: LiveServer, name: str, **fields: Any) -> dict[str, Any]:
    r = _post(live, "/v1/datasets", json={"name": name, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def _search(live: LiveServer, name: str, query: str, **fields: Any) -> list[dict[str, Any]]:
    r = _post(live, f"/v1/datasets/{name}/search", json={"query": query, **fields})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_create_upload_search_and_delete(live: LiveServer) -> None:
    made = _new(live, "kb", description="support articles")
    assert made["object"] == "dataset" and made["embedding_model"] == "all-minilm:l6-v2"
    assert made["chunk_tokens"] == 256 and made["documents"] == 0
    text = "To reset the router, hold the reset button for ten seconds. The light then blinks."
    doc = _post(live, "/v1/datasets/kb/documents", json={"name": "router.md", "text": text}).json()
    assert doc["object"] == "dataset.document" and doc["format"] == "md" and doc["chunks"] == 1
    other = "Sourdough rises with wild yeast."
    files = {"file": ("bread.txt", other.encode(), "text/plain")}
    up = _post(live, "/v1/datasets/kb/documents", files=files)
    assert up.status_code == 200, up.text
    assert up.json()["name"] == "bread.txt" and up.json()["format"] == "txt"
    hits = _search(live, "kb", "how do I reset my router", k=2)
    top = hits[0]
    assert top["document"] == "router.md" and top["dataset"] == "kb" and top["chunk"] == 0
    assert text[top["start"] : top["end"]] == top["text"]
    assert top["vector_rank"] == 1 and top["text_rank"] == 1
    assert _search(live, "kb", "router", mode="text")[0]["vector_rank"] is None
    assert _search(live, "kb", "bread yeast", mode="vector")[0]["text_rank"] is None
    info = httpx.get(f"{live.base_url}/v1/datasets/kb").json()
    assert info["documents"] == 2 and info["chunks"] == 2 and info["dimensions"] == 384
    listed = httpx.get(f"{live.base_url}/v1/datasets/kb/documents").json()["data"]
    assert [d["name"] for d in listed] == ["bread.txt", "router.md"]
    gone = httpx.delete(f"{live.base_url}/v1/datasets/kb/documents/{listed[0]['id']}").json()
    assert gone["deleted"] is True and gone["name"] == "bread.txt"
    assert httpx.delete(f"{live.base_url}/v1/datasets/kb/documents/router.md").status_code == 200
    assert _search(live, "kb", "router") == []
    assert httpx.delete(f"{live.base_url}/v1/datasets/kb").json()["deleted"] is True
    assert httpx.get(f"{live.base_url}/v1/datasets/kb").status_code == 404


def test_every_format_is_read(live: LiveServer) -> None:
    _new(live, "formats")
    docs = {
        "page.html": b"<html><head><title>x</title><script>var hidden=1</script></head>"
        b"<body><h1>Glaciers</h1><p>Glaciers carve valleys.</p></body></html>",
        "rows.csv": b"city,river\nParis,Seine\nCairo,Nile\n",
        "lines.jsonl": b'{"text": "Owls hunt at night."}\n{"title": "Bats", "body": "Bats echolocate."}\n',
        "scan.pdf": minimal_pdf("Penguins live in the southern hemisphere"),
        "notes.md": b"# Tea\n\nGreen tea is steamed; black tea is oxidised.",
    }
    for name, data in docs.items():
        r = _post(live, "/v1/datasets/formats/documents", files={"file": (name, data)})
        assert r.status_code == 200, (name, r.text)
    assert _search(live, "formats", "valleys carved by ice")[0]["document"] == "page.html"
    assert "hidden" not in " ".join(h["text"] for h in _search(live, "formats", "glaciers", k=10))
    nile = _search(live, "formats", "Which river flows through Cairo?")[0]
    assert nile["document"] == "rows.csv" and "river: Nile" in nile["text"]
    assert _search(live, "formats", "echolocation bats")[0]["document"] == "lines.jsonl"
    assert _search(live, "formats", "penguins southern")[0]["document"] == "scan.pdf"
    b64 = base64.b64encode(minimal_pdf("Koalas eat eucalyptus")).decode()
    r = _post(live, "/v1/datasets/formats/documents", json={"name": "k.pdf", "content_base64": b64})
    assert r.status_code == 200 and r.json()["format"] == "pdf"


def test_re_ingesting_a_document_replaces_its_chunks(live: LiveServer) -> None:
    _new(live, "versions", chunk_tokens=16, chunk_overlap=4)
    old = " ".join(f"alpha{i}" for i in range(40))
    first = _post(live, "/v1/datasets/versions/documents", json={"name": "a.txt", "text": old}).json()
    assert first["chunks"] > 2
    new = "beta gamma delta"
    second = _post(live, "/v1/datasets/versions/documents", json={"name": "a.txt", "text": new}).json()
    assert second["chunks"] == 1
    info = httpx.get(f"{live.base_url}/v1/datasets/versions").json()
    assert info["documents"] == 1 and info["chunks"] == 1
    assert _search(live, "versions", "alpha3", mode="text") == []
    assert _search(live, "versions", "gamma")[0]["text"] == new


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "param"),
    [
        ("/v1/datasets", {"json": {"name": "bad name"}}, 400, "name"),
        ("/v1/datasets", {"json": {"name": "x", "chunk_tokens": 8}}, 400, "chunk_tokens"),
        (
            "/v1/datasets",
            {"json": {"name": "x", "chunk_tokens": 32, "chunk_overlap": 32}},
            400,
            "chunk_overlap",
        ),
        ("/v1/datasets", {"json": {"name": "x", "colour": 1}}, 400, None),
        ("/v1/datasets/bad/documents", {"json": {"name": "a", "text": "x", "format": "docx"}}, 400, "format"),
        ("/v1/datasets/bad/documents", {"json": {"name": "a"}}, 400, "text"),
        (
            "/v1/datasets/bad/documents",
            {"json": {"name": "a", "text": "x", "content_base64": "eA=="}},
            400,
            "text",
        ),
        (
            "/v1/datasets/bad/documents",
            {"json": {"name": "a.pdf", "content_base64": "!!"}},
            400,
            "content_base64",
        ),
        ("/v1/datasets/bad/documents", {"json": {"name": "a.pdf", "content_base64": "eA=="}}, 400, None),
        ("/v1/datasets/bad/documents", {"json": {"name": "a.txt", "text": "   \n "}}, 400, None),
        ("/v1/datasets/bad/documents", {"files": {"file": ("a.txt", b"\xff\xfe\xfa")}}, 400, None),
        ("/v1/datasets/bad/documents", {"files": {"other": ("a.txt", b"x")}}, 400, "file"),
        ("/v1/datasets/bad/documents", {"files": {"file": ("a.jsonl", b"{broken\n")}}, 400, None),
        (
            "/v1/datasets/bad/documents",
            {"content": b"not json", "headers": {"content-type": "application/json"}},
            400,
            None,
        ),
        ("/v1/datasets/bad/search", {"json": {"query": "x", "k": 0}}, 400, "k"),
        ("/v1/datasets/bad/search", {"json": {"query": ""}}, 400, "query"),
        ("/v1/datasets/bad/search", {"json": {"query": "x", "mode": "magic"}}, 400, "mode"),
        ("/v1/datasets/nope/search", {"json": {"query": "x"}}, 404, None),
        ("/v1/datasets/nope/documents", {"json": {"name": "a", "text": "x"}}, 404, None),
    ],
)
def test_bad_input_is_a_clear_4xx_and_stores_nothing(
    live: LiveServer, path: str, kwargs: dict[str, Any], status: int, param: str | None
) -> None:
    if httpx.get(f"{live.base_url}/v1/datasets/bad").status_code != 200:
        _new(live, "bad")
    r = _post(live, path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    if param is not None:
        assert error.get("param") == param or param in error["message"], error
    assert httpx.get(f"{live.base_url}/v1/datasets/bad").json()["documents"] == 0
    assert "x" not in [d["name"] for d in httpx.get(f"{live.base_url}/v1/datasets").json()["data"]]


def test_a_second_dataset_of_the_same_name_is_a_conflict(live: LiveServer) -> None:
    _new(live, "twice")
    assert _post(live, "/v1/datasets", json={"name": "twice"}).status_code == 409


def test_dataset_routes_need_their_scopes(make_server: Any) -> None:
    server = make_server()
    settings = server.server.config.app.state.service.settings
    reader = {"authorization": f"Bearer {make_key(settings, 'r', scopes=['datasets:read', 'inference'])}"}
    scopes = ["datasets:write", "datasets:read", "inference"]
    writer = {"authorization": f"Bearer {make_key(settings, 'w', scopes=scopes)}"}
    base = server.base_url
    assert httpx.post(f"{base}/v1/datasets", json={"name": "s"}, headers=reader).status_code == 403
    assert httpx.post(f"{base}/v1/datasets", json={"name": "s"}, headers=writer).status_code == 200
    doc = {"name": "a.txt", "text": "hello world"}
    assert httpx.post(f"{base}/v1/datasets/s/documents", json=doc, headers=reader).status_code == 403
    assert (
        httpx.post(f"{base}/v1/datasets/s/documents", json=doc, headers=writer, timeout=60).status_code == 200
    )
    found = httpx.post(f"{base}/v1/datasets/s/search", json={"query": "hello"}, headers=reader, timeout=60)
    assert found.status_code == 200 and found.json()["data"][0]["document"] == "a.txt"
    assert httpx.delete(f"{base}/v1/datasets/s", headers=reader).status_code == 403


def test_recall_at_5_on_a_fixed_corpus(live: LiveServer) -> None:
    _new(live, "corpus")
    for name, text in CORPUS["documents"].items():
        r = _post(live, "/v1/datasets/corpus/documents", json={"name": name, "text": text})
        assert r.status_code == 200, r.text
    found = 0
    for q in CORPUS["questions"]:
        hits = _search(live, "corpus", q["question"], k=5)
        found += q["answer"] in [h["document"] for h in hits]
    recall = found / len(CORPUS["questions"])
    print(f"recall@5 = {recall:.3f} over {len(CORPUS['questions'])} questions")
    assert recall >= 0.9


def test_two_instances_on_postgresql_share_datasets(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path, postgres_server: Any
) -> None:
    """``database_url``: datasets, documents, chunks and their indexes live in PostgreSQL, so what one
    instance ingests the other searches (with the same citations and recall), re-ingests and deletes."""
    data = tmp_path_factory.mktemp("pg-datasets") / "data"
    settings = make_settings(data, database_url=postgres_server.new_database())
    services = [make_service(settings, tiny_model_path) for _ in range(2)]
    a, b = (start_server(settings, s) for s in services)
    try:
        _new(a, "corpus")
        for name, text in CORPUS["documents"].items():
            r = _post(a, "/v1/datasets/corpus/documents", json={"name": name, "text": text})
            assert r.status_code == 200, r.text
        assert [d["name"] for d in httpx.get(f"{b.base_url}/v1/datasets").json()["data"]] == ["corpus"]
        found = 0
        for q in CORPUS["questions"]:
            hits = _search(b, "corpus", q["question"], k=5)
            found += q["answer"] in [h["document"] for h in hits]
            top = hits[0]
            assert CORPUS["documents"][top["document"]][top["start"] : top["end"]] == top["text"]
        recall = found / len(CORPUS["questions"])
        print(f"recall@5 on PostgreSQL = {recall:.3f}")
        assert recall >= 0.9
        first = next(iter(CORPUS["documents"]))
        text = "Penguins huddle together through the polar winter."
        before = _search(a, "corpus", "penguins huddle in winter", k=1, mode="vector")  # A caches vectors
        assert before[0]["text"] != text
        again = _post(b, "/v1/datasets/corpus/documents", json={"name": first, "text": text})
        assert again.status_code == 200 and again.json()["chunks"] == 1
        hits = _search(a, "corpus", "penguins huddle in winter", k=1, mode="vector")  # B's write seen
        assert hits[0]["document"] == first and hits[0]["text"] == text
        assert _search(a, "corpus", "penguins", mode="text")[0]["document"] == first
        assert httpx.delete(f"{a.base_url}/v1/datasets/corpus").json()["deleted"] is True
        gone = httpx.post(f"{b.base_url}/v1/datasets/corpus/search", json={"query": "x"}, timeout=30)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "dataset_not_found"
        assert not (data / "datasets.db").exists()  # nothing of it in SQLite
    finally:
        for server in (a, b):
            server.stop()
        for service in services:
            service.close()

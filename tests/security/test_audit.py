"""The audit log: one hash-chained record per request on every door; verify finds any tampering."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest
from typer.testing import CliRunner

from llmhost.cli.main import app as cli_app
from llmhost.config import Settings
from llmhost.security.audit import AuditLog, AuditRecord
from llmhost.security.keys import KeyStore
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.security.helpers import make_key as _key

MSG = [{"role": "user", "content": "the secret plan"}]


def _rows(settings: Settings) -> list[AuditRecord]:
    log = AuditLog(settings.audit_path)
    try:
        return log.rows(limit=1000)
    finally:
        log.close()


@pytest.fixture
def live(tmp_path: Path, tiny_model_path: Path) -> Iterator[tuple[LiveServer, Settings]]:
    settings = make_settings(tmp_path / "data")
    service = make_service(settings, tiny_model_path)
    server = start_server(settings, service)
    yield server, settings
    server.stop()
    service.close()


def _record(i: int) -> AuditRecord:
    return AuditRecord(
        ts=1.0 + i, request_id=f"r{i}", key_id="k", principal="p", door="openai", route="m", target="local/m",
        model="m", kind="chat", stream=False, prompt_tokens=i, completion_tokens=1, cost=0.0, status=200,
        error="", policy="[]", latency_ms=1.0, prompt_sha256="a" * 64, answer_sha256="b" * 64,
    )  # fmt: skip


def test_every_door_writes_one_record_with_who_and_hashes_but_no_text(
    live: tuple[LiveServer, Settings],
) -> None:
    server, settings = live
    secret = _key(settings, "auditor-test")
    base = server.base_url
    openai.OpenAI(base_url=f"{base}/v1", api_key=secret).chat.completions.create(
        model=TINY, messages=MSG, max_tokens=2
    )  # type: ignore[arg-type]
    anthropic.Anthropic(base_url=base, api_key=secret).messages.create(model=TINY, max_tokens=2, messages=MSG)  # type: ignore[arg-type]
    ollama.Client(host=base, headers={"authorization": f"Bearer {secret}"}).chat(
        model=TINY, messages=MSG, options={"num_predict": 2}
    )
    h = {"authorization": f"Bearer {secret}"}
    httpx.post(
        f"{base}/v1/responses",
        json={"model": TINY, "input": "the secret plan", "max_output_tokens": 2},
        headers=h,
        timeout=60,
    )
    with httpx.stream(
        "POST",
        f"{base}/v1/chat/completions",
        json={"model": TINY, "messages": MSG, "max_tokens": 2, "stream": True},
        headers=h,
        timeout=60,
    ) as r:
        body = r.read()
    assert body.endswith(b"data: [DONE]\n\n")
    rows = _rows(settings)  # written before the last event was sent: no waiting needed
    assert [r.door for r in rows] == ["openai", "anthropic", "ollama", "responses", "openai"]
    key_id = KeyStore(settings.database_path).get("auditor-test").id
    for r in rows:
        assert r.key_id == key_id and r.principal == "auditor-test" and r.status == 200
        assert r.route == TINY and r.target == f"local/{TINY}" and r.prompt_tokens > 0
        assert len(r.prompt_sha256) == 64 and len(r.answer_sha256) == 64 and r.content is None
    assert rows[-1].stream
    raw = b"".join(p.read_bytes() for p in settings.data_dir.glob("audit.db*"))
    assert b"the secret plan" not in raw and secret.encode() not in raw


def test_refusals_are_recorded_with_their_status(live: tuple[LiveServer, Settings]) -> None:
    server, settings = live
    narrow = _key(settings, "narrow", models=["other*"])
    slow = _key(settings, "slow", rpm=1)
    url = f"{server.base_url}/v1/chat/completions"
    body = {"model": TINY, "messages": MSG, "max_tokens": 1}
    assert httpx.post(url, json=body, headers={"authorization": f"Bearer {narrow}"}).status_code == 403
    for expected in (200, 429):
        assert (
            httpx.post(url, json=body, headers={"authorization": f"Bearer {slow}"}, timeout=60).status_code
            == expected
        )
    assert [(r.principal, r.status, r.error) for r in _rows(settings)] == [
        ("narrow", 403, "RefusedError"), ("slow", 200, ""), ("slow", 429, "RateLimitError")
    ]  # fmt: skip


def test_a_request_that_fails_before_any_target_keeps_the_chain_intact(
    live: tuple[LiveServer, Settings],
) -> None:
    """No attempt means no cost: the record must hash 0.0 as the REAL column reads it back, not 0."""
    server, settings = live
    body = {"model": "no-such-model", "messages": MSG, "max_tokens": 1}
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json=body).status_code == 404
    log = AuditLog(settings.audit_path)
    try:
        count, _, breaks = log.verify()
    finally:
        log.close()
    assert count == 1 and breaks == []


def test_store_content_keeps_the_text(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "d", audit={"store_content": True})
    service = make_service(settings, tiny_model_path)
    server = start_server(settings, service)
    try:
        httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": TINY, "messages": MSG, "max_tokens": 2},
            timeout=60,
        )
    finally:
        server.stop()
        service.close()
    (row,) = _rows(settings)
    assert row.content is not None and "the secret plan" in json.loads(row.content)["prompt"]


def test_the_cli_door_is_audited_too(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path / "d")
    make_service(settings, tiny_model_path).close()
    monkeypatch.setenv("LLMHOST_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LLMHOST_ENGINE__N_CTX", "512")
    result = CliRunner().invoke(cli_app, ["run", TINY, "hello", "--max-tokens", "2"])
    assert result.exit_code == 0, result.output
    (row,) = _rows(settings)
    assert row.door == "cli" and row.principal == "owner" and row.status == 200


def test_many_concurrent_requests_extend_one_unbroken_chain(live: tuple[LiveServer, Settings]) -> None:
    server, settings = live

    async def burst() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as c:
            body = {"model": TINY, "messages": MSG, "max_tokens": 1}
            await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(24)))

    asyncio.run(burst())
    log = AuditLog(settings.audit_path)
    count, _, breaks = log.verify()
    log.close()
    assert count == 24 and breaks == []


# ----- verify ----------------------------------------------------------------------------------------
@pytest.fixture
def chain(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    log = AuditLog(path)
    for i in range(1, 7):
        log.append(_record(i))
    log.close()
    return path


def _verify(path: Path, head: tuple[int, str] | None = None) -> list[tuple[int, str]]:
    log = AuditLog(path)
    try:
        return [(b.seq, b.reason) for b in log.verify(head)[2]]
    finally:
        log.close()


def _sql(path: Path, sql: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(sql)


def test_an_intact_chain_verifies(chain: Path) -> None:
    assert _verify(chain) == []


def test_an_edited_row_is_named(chain: Path) -> None:
    _sql(chain, "UPDATE audit SET completion_tokens = 0 WHERE seq = 3")
    assert [seq for seq, _ in _verify(chain)] == [3]


def test_a_deleted_row_is_named(chain: Path) -> None:
    _sql(chain, "DELETE FROM audit WHERE seq = 4")
    found = _verify(chain)
    assert found and all(seq == 5 for seq, _ in found)
    assert "missing" in found[0][1]


def test_reordered_rows_are_found(chain: Path) -> None:
    _sql(chain, "UPDATE audit SET ts = -ts WHERE seq IN (2, 5)")  # edit, then hide it: swap the two rows
    with sqlite3.connect(chain) as conn:
        a = conn.execute("SELECT * FROM audit WHERE seq = 2").fetchone()
        b = conn.execute("SELECT * FROM audit WHERE seq = 5").fetchone()
        conn.execute("DELETE FROM audit WHERE seq IN (2, 5)")
        marks = ",".join("?" * len(a))
        conn.execute(f"INSERT INTO audit VALUES ({marks})", (2, *b[1:]))
        conn.execute(f"INSERT INTO audit VALUES ({marks})", (5, *a[1:]))
    assert {seq for seq, _ in _verify(chain)} >= {2, 3, 5, 6}


def test_rows_cut_off_the_end_are_found_with_a_kept_head(chain: Path) -> None:
    log = AuditLog(chain)
    _, head, _ = log.verify()
    log.close()
    _sql(chain, "DELETE FROM audit WHERE seq >= 5")
    assert _verify(chain) == []  # a shorter chain is still a chain ...
    assert _verify(chain, (6, head))  # ... but not the one whose head was kept


def test_the_cli_verifies_and_exits_non_zero_on_a_break(chain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMHOST_DATA_DIR", str(chain.parent))
    ok = CliRunner().invoke(cli_app, ["audit", "verify"])
    assert ok.exit_code == 0 and "6 rows, chain intact" in ok.output
    head = ok.output.strip().rsplit(" ", 1)[-1]
    assert CliRunner().invoke(cli_app, ["audit", "verify", "--head", head]).exit_code == 0
    tail = CliRunner().invoke(cli_app, ["audit", "tail", "-n", "2", "--json"])
    assert [json.loads(line)["seq"] for line in tail.output.splitlines()] == [5, 6]
    _sql(chain, "UPDATE audit SET principal = 'someone else' WHERE seq = 2")
    bad = CliRunner().invoke(cli_app, ["audit", "verify"])
    assert bad.exit_code == 1 and "row 2" in bad.output
    assert CliRunner().invoke(cli_app, ["audit", "verify", "--head", "nonsense"]).exit_code != 0


def test_a_process_killed_while_writing_leaves_no_half_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    script = (
        "import sys; sys.path.insert(0, '.');"
        "from llmhost.security.audit import AuditLog; from tests.security.test_audit import _record;"
        f"log = AuditLog(__import__('pathlib').Path({str(path)!r}));"
        "i = 0\nwhile True:\n    i += 1; log.append(_record(i))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 20
    while not path.exists() or len(_rows_at(path)) < 200:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _verify(path) == []


def _rows_at(path: Path) -> list[AuditRecord]:
    log = AuditLog(path)
    try:
        return log.rows(limit=100_000)
    finally:
        log.close()


# ----- over HTTP -------------------------------------------------------------------------------------
def test_api_audit_needs_the_audit_scope(live: tuple[LiveServer, Settings]) -> None:
    server, settings = live
    user = _key(settings, "user")
    auditor = _key(settings, "auditor", scopes=["audit"])
    httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": TINY, "messages": MSG, "max_tokens": 1},
        headers={"authorization": f"Bearer {user}"},
        timeout=60,
    )
    assert (
        httpx.get(f"{server.base_url}/api/audit", headers={"authorization": f"Bearer {user}"}).status_code
        == 403
    )
    r = httpx.get(f"{server.base_url}/api/audit", headers={"authorization": f"Bearer {auditor}"})
    assert r.status_code == 200
    data = r.json()["data"]
    assert len(data) == 1 and data[0]["principal"] == "user" and r.json()["last"] == 1
    assert (
        httpx.get(
            f"{server.base_url}/api/audit?limit=0", headers={"authorization": f"Bearer {auditor}"}
        ).status_code
        == 400
    )


def test_model_management_calls_are_audited_too(live: tuple[LiveServer, Settings]) -> None:
    server, settings = live
    ops = _key(settings, "ops", scopes=["models:write", "models:read"])
    h = {"authorization": f"Bearer {ops}"}
    assert (
        httpx.post(
            f"{server.base_url}/api/copy", json={"source": TINY, "destination": "alias"}, headers=h
        ).status_code
        == 200
    )
    assert httpx.post(f"{server.base_url}/api/unload", json={"model": "nope"}, headers=h).status_code == 404
    assert (
        httpx.request(
            "DELETE", f"{server.base_url}/api/delete", json={"model": "alias"}, headers=h
        ).status_code
        == 409
    )
    rows = _rows(settings)
    assert [(r.door, r.kind, r.model, r.status, r.principal) for r in rows] == [
        ("admin", "POST /api/copy", TINY, 200, "ops"),
        ("admin", "POST /api/unload", "nope", 404, "ops"),
        ("admin", "DELETE /api/delete", "alias", 409, "ops"),  # refused: the server has it loaded
    ]
    log = AuditLog(settings.audit_path)
    assert log.verify()[2] == []
    log.close()

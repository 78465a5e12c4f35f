"""Request ids and JSON logs (``llmhost.logs``): every response names its request, the doors, usage and
audit use the same id, and ``log_format = "json"`` writes one parseable object per line."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llmhost.logs import JsonFormatter, configure_logging, current_request_id, request_id_for
from tests.conftest import TINY, LiveServer, ServerFactory, make_service, make_settings, start_server
from tests.providers.fault_server import closed_port
from tests.support import free_port

KEY = "sk-logs-test-key-51c0e2"
GENERATED = re.compile(r"req-[0-9a-f]{24}")
REPO_ROOT = Path(__file__).resolve().parents[1]
CHAT = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def keyed(make_server: ServerFactory) -> LiveServer:
    """A server with a key, a small body limit, and a route to an upstream that is down."""
    providers = {"dead": {"type": "openai", "base_url": f"http://127.0.0.1:{closed_port()}/v1"}}
    return make_server(
        api_key=KEY,
        max_request_bytes=4096,
        providers={name: {**p, "health_interval": 0} for name, p in providers.items()},
        routes={"dead": {"targets": [{"provider": "dead", "model": "m"}], "retries": 0}},
    )


def _ids(r: httpx.Response) -> list[str]:
    return r.headers.get_list("x-request-id")


def test_every_response_carries_one_request_id_refusals_and_errors_included(keyed: LiveServer) -> None:
    base, auth = keyed.base_url, {"authorization": f"Bearer {KEY}"}
    answers = {
        "ok": httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=auth, timeout=30),
        "stream": httpx.post(
            f"{base}/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth, timeout=30
        ),
        "probe": httpx.get(f"{base}/health"),
        "no key (401)": httpx.get(f"{base}/v1/models"),
        "wrong host (403)": httpx.get(f"{base}/health", headers={"host": "evil.example"}),
        "too large (413)": httpx.post(f"{base}/v1/chat/completions", content=b"x" * 8192, headers=auth),
        "bad body (400)": httpx.post(f"{base}/v1/chat/completions", json={"model": TINY}, headers=auth),
        "unknown path (404)": httpx.get(f"{base}/v1/nothing", headers=auth),
        "upstream down (5xx)": httpx.post(
            f"{base}/v1/chat/completions", json={**CHAT, "model": "dead"}, headers=auth, timeout=30
        ),
        "preflight": httpx.options(
            f"{base}/v1/chat/completions",
            headers={"origin": "http://localhost:3000", "access-control-request-method": "POST"},
        ),
        "ollama": httpx.post(f"{base}/api/chat", json={**CHAT, "stream": False}, headers=auth, timeout=30),
        "anthropic": httpx.post(f"{base}/v1/messages", json=CHAT, headers={"x-api-key": KEY}, timeout=30),
    }
    statuses = {name: r.status_code for name, r in answers.items()}
    assert (
        statuses["ok"] == statuses["stream"] == 200
        and statuses["no key (401)"] == 401
        and statuses["too large (413)"] == 413
    )
    assert statuses["wrong host (403)"] == 403 and statuses["upstream down (5xx)"] >= 500, statuses
    seen = set()
    for name, r in answers.items():
        ids = _ids(r)
        assert len(ids) == 1 and GENERATED.fullmatch(ids[0]), (name, ids)
        seen.add(ids[0])
    assert len(seen) == len(answers)  # one id per request
    # Anthropic's SDK reads its own header: the same id.
    assert answers["anthropic"].headers["request-id"] == _ids(answers["anthropic"])[0]


def test_a_client_request_id_is_kept_when_sane_and_reaches_the_audit_record(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    settings = make_settings(tmp_path / "data")
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    try:
        sane = "trace-2026.12.02_abc-" + "x" * 100  # 121 characters
        r = httpx.post(
            f"{live.base_url}/v1/chat/completions", json=CHAT, headers={"x-request-id": sane}, timeout=30
        )
        assert r.status_code == 200 and _ids(r) == [sane]
        unknown = {**CHAT, "model": "no-such-model"}  # refused inside the pipeline: audited
        refused = httpx.post(
            f"{live.base_url}/v1/chat/completions", json=unknown, headers={"x-request-id": "r-2"}
        )
        assert refused.status_code == 404 and _ids(refused) == ["r-2"]
        for unsafe in ("has space", "x" * 129, "semi;colon", 'quote"d', "üml"):
            r = httpx.get(f"{live.base_url}/health", headers={"x-request-id": unsafe.encode()})
            assert GENERATED.fullmatch(_ids(r)[0]), unsafe
    finally:
        live.stop()
        service.close()
    conn = sqlite3.connect(settings.audit_path)
    try:
        ids = [row[0] for row in conn.execute("SELECT request_id FROM audit ORDER BY seq")]
    finally:
        conn.close()
    assert ids == [sane, "r-2"]  # answered and refused requests alike carry the client's id


def test_request_id_for_keeps_sane_ids_and_replaces_others() -> None:
    assert request_id_for(b"abc-123") == "abc-123"
    assert request_id_for("A.b_C-9") == "A.b_C-9"
    for bad in (None, "", " ", "a\nb", "a" * 129, "ü", b"\xff"):
        assert GENERATED.fullmatch(request_id_for(bad)), bad
    assert current_request_id() is None  # outside a request


# ----- the JSON format -------------------------------------------------------------------------------
def _record(name: str, msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, exc_info)


def test_a_json_line_is_one_object_with_time_level_logger_message_and_traceback() -> None:
    line = JsonFormatter().format(_record("llmhost.x", "failed:\n %s \u2028 é", "why", exc=True))
    assert "\n" not in line and "\u2028" not in line
    entry = json.loads(line)
    assert entry["level"] == "error" and entry["logger"] == "llmhost.x"
    assert entry["message"] == "failed:\n why \u2028 é"
    assert "RuntimeError: boom" in entry["exc"] and "Traceback" in entry["exc"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["ts"])
    assert "request_id" not in entry  # none known outside a request
    access = _record("uvicorn.access", '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/health", "1.1", 200)
    entry = json.loads(JsonFormatter().format(access))
    assert entry["message"] == '127.0.0.1:5 - "GET /health HTTP/1.1" 200'
    assert (entry["method"], entry["path"], entry["status"], entry["client"]) == (
        "GET",
        "/health",
        200,
        "127.0.0.1:5",
    )


def test_log_lines_written_while_serving_a_request_name_its_id(keyed: LiveServer) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    logging.getLogger("llmhost").addHandler(handler)
    try:
        r = httpx.post(
            f"{keyed.base_url}/v1/chat/completions",
            json={**CHAT, "model": "dead"},
            headers={"authorization": f"Bearer {KEY}", "x-request-id": "dead-upstream-1"},
            timeout=30,
        )
    finally:
        logging.getLogger("llmhost").removeHandler(handler)
    assert r.status_code >= 500 and _ids(r) == ["dead-upstream-1"]
    entries = [json.loads(line) for line in lines]
    failed = [e for e in entries if "failed" in e["message"]]
    assert failed and all(e.get("request_id") == "dead-upstream-1" for e in failed), entries


def test_configure_logging_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    # Handlers others added; one an earlier test's `llmhost serve` left is ours and gets replaced.
    before = [h for h in root.handlers if h.get_name() != "llmhost.stderr"]
    level = root.level
    try:
        first = configure_logging("info", "text")
        second = configure_logging("debug", "json")
        ours = [h for h in root.handlers if h not in before]
        assert ours == [second] and first not in root.handlers
        assert isinstance(second.formatter, JsonFormatter) and root.level == logging.DEBUG
        assert all(h in root.handlers for h in before)  # pytest's and the secret watch stay
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
        root.setLevel(level)


# ----- llmhost serve ---------------------------------------------------------------------------------
def test_serve_with_json_logs_writes_only_json_on_stderr_access_lines_included(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMHOST_")}
    env.update(
        LLMHOST_DATA_DIR=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "cfg"),
        LLMHOST_LOG_FORMAT="json",
        LLMHOST_LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
    )
    stderr = tmp_path / "stderr.log"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmhost", "serve", "--no-model", "--port", str(port)],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, stderr.read_text()
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{port}/health", headers={"x-request-id": "probe-7"}, timeout=2
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, stderr.read_text()
                time.sleep(0.1)
        assert r.status_code == 200 and _ids(r) == ["probe-7"]
        httpx.get(f"http://127.0.0.1:{port}/v1/nothing", headers={"x-request-id": "probe-8"}, timeout=5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    lines = [line for line in stderr.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is JSON
    assert any(e["logger"].startswith("uvicorn") and "Uvicorn running" in e["message"] for e in entries)
    access = {e.get("request_id"): e for e in entries if e["logger"] == "uvicorn.access"}
    assert access["probe-7"]["path"] == "/health" and access["probe-7"]["status"] == 200
    assert access["probe-8"]["status"] == 404

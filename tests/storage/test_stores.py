"""Every store that ``database_url`` moves (registry, keys, usage, audit, stored responses, agents and
runs) on both backends: the same calls give the same answers on SQLite and PostgreSQL, a change made by
one connection is seen by another (two instances on one database), an existing database is upgraded in
place from the previous schema, and the audit chain stays exact with several writers at once."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from llmhost.apps.agents.spec import AgentSpec
from llmhost.apps.agents.store import AgentStore, Feedback, RunRecord
from llmhost.config import load_settings
from llmhost.doors.openai.stored import ChatCompletionStore
from llmhost.doors.responses.store import ResponseStore
from llmhost.errors import ConfigError, ConflictError
from llmhost.models.registry import ModelRecord, Registry
from llmhost.router import cost
from llmhost.router.cost import UsageRecord, UsageStore
from llmhost.security import audit
from llmhost.security import keys as keys_module
from llmhost.security.audit import AuditLog, AuditRecord
from llmhost.security.keys import KeyStore
from llmhost.storage import Database, migrate
from tests.postgres import PostgresServer

LEGACY = Path(__file__).parent.parent / "data" / "legacy_ba9d0e1"
"""SQLite dumps of the databases the previous release (ba9d0e1) wrote, one row or two in each table."""

FIELDS = {
    "ts": 1700000000.0,
    "request_id": "r",
    "key_id": "key_a",
    "principal": "a",
    "door": "openai",
    "route": "m",
    "target": "local/m",
    "model": "m",
    "kind": "chat",
    "stream": False,
    "prompt_tokens": 3,
    "completion_tokens": 4,
    "cost": 0.25,
    "status": 200,
    "error": "",
    "policy": "[]",
    "latency_ms": 12.5,
    "prompt_sha256": "a" * 64,
    "answer_sha256": "b" * 64,
}


def _usage(key: str | None, cost_usd: float, ts: float = 1700000000.5) -> UsageRecord:
    return UsageRecord(
        ts=ts,
        model="m",
        provider="local",
        target_model="m",
        tier=0,
        prompt_tokens=3,
        completion_tokens=4,
        cached_tokens=1,
        latency_ms=12.5,
        cost=cost_usd,
        status="ok",
        api_key=key,
        door="openai",
        principal="a",
    )


def _model(name: str) -> ModelRecord:
    return ModelRecord(
        name=name,
        digest="sha256:" + "1" * 64,
        path=Path("/models/blob"),
        size_bytes=10,
        architecture="llama",
        parameter_count=5,
        quantization="F32",
        context_length=512,
        chat_template="{{ x }}",
        license=None,
        source="test",
        created_at=datetime(2026, 12, 3, 1, 2, 3, 456789, tzinfo=UTC),
    )


# ----- the same answers on both ----------------------------------------------------------------------
def test_keys_made_by_one_instance_are_used_and_revoked_on_another(db_target: str) -> None:
    first, second = KeyStore(db_target), KeyStore(db_target)
    try:
        key, secret = first.create("team", rpm=60, budget=2.5, models=["gemma*"])
        seen = second.lookup(secret)
        assert seen is not None and (seen.id, seen.rpm, seen.budget, seen.models) == (
            key.id,
            60,
            2.5,
            ("gemma*",),
        )
        with pytest.raises(ConflictError):
            second.create("team")
        _, new_secret = second.rotate("team", grace=0)
        assert first.lookup(secret) is None and first.lookup(new_secret) is not None
        second.revoke("team")
        assert first.lookup(new_secret) is None and first.has_keys()
    finally:
        first.close()
        second.close()


def test_usage_sums_and_groups_alike(db_target: str) -> None:
    store = UsageStore(db_target)
    try:
        for n in range(5):
            store.record(_usage("key_a" if n < 3 else None, 0.125, ts=1700000000.5 + n * 86400))
        store.flush()
        assert store.spent("key_a") == pytest.approx(0.375) and store.spent("key_x") == 0.0
        by_key = store.summary("key")
        assert by_key == [
            {
                "key": "-",
                "requests": 2,
                "ok": 2,
                "prompt_tokens": 6,
                "completion_tokens": 8,
                "cached_tokens": 2,
                "cost": 0.25,
                "avg_latency_ms": 12.5,
            },
            {
                "key": "key_a",
                "requests": 3,
                "ok": 3,
                "prompt_tokens": 9,
                "completion_tokens": 12,
                "cached_tokens": 3,
                "cost": 0.375,
                "avg_latency_ms": 12.5,
            },
        ]
        days = [row["day"] for row in store.summary("day")]
        assert days == ["2023-11-14", "2023-11-15", "2023-11-16", "2023-11-17", "2023-11-18"]
        assert [r["target"] for r in store.summary("target")] == ["local/m"]
    finally:
        store.close()


def test_the_registry_keeps_every_field(db_target: str) -> None:
    with Registry(db_target) as registry:  # type: ignore[arg-type]
        registry.put(_model("a:1"))
        registry.copy("a:1", "b:1")
        assert registry.get("a:1") == _model("a:1")
        assert [r.name for r in registry.list()] == ["a:1", "b:1"]
        assert registry.remove("a:1").name == "a:1" and registry.find("a:1") is None


def test_stored_responses_and_their_items(db_target: str) -> None:
    store = ResponseStore(db_target)
    try:
        response = {"id": "resp_1", "created_at": 1.0, "output": [{"id": "out_1", "type": "message"}]}
        store.save(response, [{"id": "ctx_1"}], [{"id": "in_1"}, {"id": "in_2"}], "alice")
        assert store.get("resp_1", "alice") == response and store.get("resp_1", "bob") is None
        assert [i["id"] for i in store.conversation("resp_1", "alice") or []] == [
            "ctx_1",
            "in_1",
            "in_2",
            "out_1",
        ]
        page = store.input_items("resp_1", "alice", order="asc", limit=2)
        assert page is not None and [i["id"] for i in page.items] == ["ctx_1", "in_1"] and page.has_more
        assert store.find_item("in_2", "alice") == {"id": "in_2"}
        assert store.delete("resp_1", "alice") and store.find_item("in_2", "alice") is None
    finally:
        store.close()


def test_stored_chat_completions(db_target: str) -> None:
    store = ChatCompletionStore(db_target)
    try:
        for n, model in enumerate(["m", "m", "other"]):
            body = {"id": f"chatcmpl-{n}", "created": 1, "model": model, "choices": []}
            store.save(body, [{"id": f"chatcmpl-{n}-0", "role": "user"}], {"n": str(n)}, "alice")
        assert store.get("chatcmpl-0", "alice") == {
            "id": "chatcmpl-0", "created": 1, "model": "m", "choices": [], "metadata": {"n": "0"}
        }  # fmt: skip
        assert store.get("chatcmpl-0", "bob") is None
        listed = store.list("alice", model=None, metadata={}, order="asc")
        assert [c["id"] for c in listed] == ["chatcmpl-0", "chatcmpl-1", "chatcmpl-2"]
        newest_first = store.list("alice", model="m", metadata={}, order="desc")
        assert [c["id"] for c in newest_first] == ["chatcmpl-1", "chatcmpl-0"]
        assert [c["id"] for c in store.list("alice", model=None, metadata={"n": "2"}, order="asc")] == [
            "chatcmpl-2"
        ]
        assert store.messages("chatcmpl-1", "alice") == [{"id": "chatcmpl-1-0", "role": "user"}]
        assert store.update("chatcmpl-1", "alice", {"k": "v"}) and not store.update("chatcmpl-1", "bob", {})
        assert (store.get("chatcmpl-1", "alice") or {})["metadata"] == {"k": "v"}
        assert store.delete("chatcmpl-1", "alice") and not store.delete("chatcmpl-1", "alice")
        assert store.list("bob", model=None, metadata={}, order="asc") == []
    finally:
        store.close()


def test_agents_runs_and_feedback(db_target: str) -> None:
    first, second = AgentStore(db_target, db_target), AgentStore(db_target, db_target)
    try:
        before = second.version()
        first.create(AgentSpec(name="helper", model="m", system="be brief"))
        assert second.version() != before and second.get("helper").spec.system == "be brief"
        with pytest.raises(ConflictError):
            second.create(AgentSpec(name="helper", model="m"))
        run = RunRecord("run_1", "helper", "m", "openai", "a", "key_a", 5.0, "ok", "", 1.5, 1, 2, 0.5, True)
        first.record(run)
        first.flush()
        assert second.run("run_1") == run
        second.add_feedback(Feedback("run_1", "a", "up", None, "", 6.0))
        second.add_feedback(Feedback("run_1", "a", None, 4, "better", 7.0))  # the rater's second word wins
        assert first.feedback(["run_1"]) == {"run_1": [Feedback("run_1", "a", None, 4, "better", 7.0)]}
        first.delete("helper")
        assert second.find("helper") is None
    finally:
        first.close()
        second.close()


def test_runs_past_their_retention_are_deleted_with_their_feedback(db_target: str) -> None:
    now = [100_000.0]
    store = AgentStore(db_target, db_target, runs_retention=3600.0, clock=lambda: now[0])
    try:

        def run(i: int, created: float) -> RunRecord:
            return RunRecord(f"run_{i}", "", "m", "openai", "a", "", created, "ok", "", 1.0, 1, 1, 0.0, False)

        store.record(run(1, now[0] - 7200))  # the first record prunes (nothing is written yet)
        store.record(run(2, now[0] + 1))
        store.flush()
        store.add_feedback(Feedback("run_1", "a", "up", None, "", now[0]))
        store.add_feedback(Feedback("run_2", "a", "down", None, "", now[0]))
        now[0] += 1800  # within the hour: recording does not prune again
        store.record(run(3, now[0]))
        store.flush()
        assert {r.id for r in store.runs()} == {"run_1", "run_2", "run_3"}
        now[0] += 1800  # an hour after the last prune: this record prunes, off the request's path
        store.record(run(4, now[0]))
        store.flush()
        deadline = time.monotonic() + 30  # the prune runs on a thread: slow on a loaded machine
        while "run_1" in {r.id for r in store.runs()} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {r.id for r in store.runs()} == {"run_2", "run_3", "run_4"}
        kept = Feedback("run_2", "a", "down", None, "", 100_000.0)
        assert store.feedback(["run_1", "run_2"]) == {"run_2": [kept]}
        assert store.prune(60.0) == 2  # by hand: run_2 (an hour old) and run_3 (half an hour)
        assert {r.id for r in store.runs()} == {"run_4"}
    finally:
        store.close()


def test_runs_retention_setting() -> None:
    assert load_settings(None, agents={"runs_retention": "30d"}).agents.runs_retention == 30 * 86400
    assert load_settings(None, agents={"runs_retention": "-1"}).agents.runs_retention is None
    assert load_settings(None).agents.runs_retention is None
    with pytest.raises(ConfigError, match="runs_retention"):
        load_settings(None, agents={"runs_retention": "0"})


def test_the_audit_chain_stays_exact_with_several_writers(db_target: str) -> None:
    writers = [AuditLog(db_target) for _ in range(4)]
    errors: list[BaseException] = []

    def write(log: AuditLog, n: int) -> None:
        try:
            for i in range(25):
                log.append(AuditRecord(**{**FIELDS, "request_id": f"w{n}-{i}"}))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(log, n)) for n, log in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        count, head, breaks = writers[0].verify()
        assert (count, breaks) == (100, [])
        assert [r.seq for r in writers[1].rows(limit=1000)] == list(range(1, 101))
        assert writers[2].verify(head=(100, head))[2] == []
    finally:
        for log in writers:
            log.close()


# ----- upgrades in place -----------------------------------------------------------------------------
def _legacy(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((LEGACY / f"{name}.sql").read_text())
    return path


def test_databases_of_the_previous_release_are_upgraded_in_place(tmp_path: Path) -> None:
    main, audit_db = _legacy(tmp_path, "llmhost"), _legacy(tmp_path, "audit")
    agents_db, runs_db = _legacy(tmp_path, "agents"), _legacy(tmp_path, "runs")
    secret = (LEGACY / "secret.txt").read_text().strip()

    keys = KeyStore(main)
    key = keys.lookup(secret)
    assert key is not None and (key.name, key.rpm, key.budget) == ("old-key", 10, 1.5)
    keys.create("new-key")  # and it takes writes
    keys.close()

    usage = UsageStore(main)
    assert usage.spent(key.id) == 0.25
    usage.close()

    with Registry(main) as registry:
        assert registry.get("old:model").context_length == 512
    responses = ResponseStore(main)
    assert [i["id"] for i in responses.conversation("resp_old", "old-key") or []] == ["in_1", "msg_1"]
    responses.close()

    log = AuditLog(audit_db)
    assert log.verify()[0] == 2 and log.verify()[2] == []
    log.append(AuditRecord(**FIELDS))  # type: ignore[arg-type]
    assert log.verify()[0] == 3 and log.verify()[2] == []
    log.close()

    agents = AgentStore(agents_db, runs_db)
    assert agents.get("old-agent").spec.system == "be brief"
    assert agents.run("run_1").agent == "old-agent" and len(agents.feedback(["run_1"])["run_1"]) == 1
    agents.close()

    with sqlite3.connect(main) as conn:
        versions = dict(conn.execute("SELECT component, version FROM schema_version").fetchall())
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert versions == {
        "keys": len(keys_module.MIGRATIONS),
        "usage": len(cost.MIGRATIONS),
        "models": 1,
        "responses": 1,
    }
    assert "usage_api_key" in indexes


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_previous_schema_version_is_upgraded_with_its_rows(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A database one migration behind (usage without its key index, audit without its key index) is
    brought up to date when the new code opens it; rows written before stay readable and chained."""
    if backend == "sqlite":
        target = str(tmp_path / "old.db")
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        target = server.new_database()
    with Database(target) as db:  # what the previous schema version held
        migrate(db, "usage", cost.MIGRATIONS[:-1])
        migrate(db, "audit", audit.MIGRATIONS[:-1])
        db.execute(
            "INSERT INTO usage (ts, model, provider, target_model, tier, prompt_tokens, completion_tokens,"
            " cached_tokens, latency_ms, cost, status, api_key, stream) VALUES (1, 'm', 'local', 'm', 0, 1,"
            " 1, 0, 1.0, 0.5, 'ok', 'key_a', 0)"
        )
    with Database(target) as db:
        values = {**FIELDS, "stream": 0, "content": None, "prev": audit.GENESIS}
        digest = audit.record_hash(1, values)
        names = ", ".join(values)
        db.execute(
            f"INSERT INTO audit (seq, {names}, hash) VALUES (1, {', '.join('?' * len(values))}, ?)",
            (*values.values(), digest),
        )

    store = UsageStore(target)  # the new code opens it
    store.record(_usage("key_a", 0.25))
    store.flush()
    assert store.spent("key_a") == 0.75
    store.close()
    log = AuditLog(target)
    log.append(AuditRecord(**FIELDS))  # type: ignore[arg-type]
    assert log.verify()[0] == 2 and log.verify()[2] == []
    log.close()
    with Database(target) as db:
        versions = dict(db.query("SELECT component, version FROM schema_version"))
    assert versions == {"usage": len(cost.MIGRATIONS), "audit": len(audit.MIGRATIONS)}


def test_a_wrong_postgresql_address_is_one_clear_error() -> None:
    with pytest.raises(psycopg.OperationalError):
        KeyStore("postgresql://nobody:pw@127.0.0.1:1/none")

"""The SQLite model registry: records round-trip, names are unique, the database is WAL and versioned."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from llmhost.errors import ModelError, ModelNotFoundError
from llmhost.models.registry import SCHEMA_VERSION, ModelRecord, Registry

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def make_record(name: str = "tiny", digest: str = DIGEST_A, **changes: object) -> ModelRecord:
    fields: dict[str, object] = {
        "name": name,
        "digest": digest,
        "path": Path("/models/blobs") / digest.replace(":", "-"),
        "size_bytes": 482_304,
        "architecture": "llama",
        "parameter_count": 69_888,
        "quantization": "F32",
        "context_length": 2048,
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
        "license": "apache-2.0",
        "source": "import:/tmp/tiny.gguf",
        "created_at": datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    }
    fields.update(changes)
    return ModelRecord(**fields)  # type: ignore[arg-type]


def test_put_then_get_round_trips_every_field(registry: Registry) -> None:
    record = make_record()
    registry.put(record)
    assert registry.get("tiny") == record
    assert registry.find("tiny") == record


def test_optional_fields_round_trip_as_none(registry: Registry) -> None:
    record = make_record(context_length=None, chat_template=None, license=None)
    registry.put(record)
    assert registry.get("tiny") == record


def test_find_returns_none_and_get_raises_for_an_unknown_name(registry: Registry) -> None:
    assert registry.find("nope") is None
    with pytest.raises(ModelNotFoundError) as excinfo:
        registry.get("nope")
    assert excinfo.value.name == "nope"
    assert "nope" in str(excinfo.value)


def test_list_is_sorted_by_name(registry: Registry) -> None:
    for name in ["zeta:1b", "alpha", "org/repo:q4_k_m", "gemma3:270m"]:
        registry.put(make_record(name))
    assert [r.name for r in registry.list()] == ["alpha", "gemma3:270m", "org/repo:q4_k_m", "zeta:1b"]


def test_list_of_an_empty_registry_is_empty(registry: Registry) -> None:
    assert registry.list() == []


def test_put_replaces_the_record_with_the_same_name(registry: Registry) -> None:
    registry.put(make_record("tiny", DIGEST_A))
    replacement = make_record("tiny", DIGEST_B, quantization="Q8_0", license=None)
    registry.put(replacement)
    assert registry.get("tiny") == replacement
    assert len(registry.list()) == 1


def test_remove_returns_the_record_and_unregisters_it(registry: Registry) -> None:
    record = make_record()
    registry.put(record)
    assert registry.remove("tiny") == record
    assert registry.find("tiny") is None
    with pytest.raises(ModelNotFoundError):
        registry.remove("tiny")


def test_copy_adds_or_re_points_a_name_and_returns_what_it_replaced(registry: Registry) -> None:
    source = make_record("src", DIGEST_A)
    registry.put(source)
    record, previous = registry.copy("src", "dst")
    assert previous is None
    assert record == registry.get("dst")
    assert record.created_at > source.created_at
    assert dataclasses.replace(record, name="src", created_at=source.created_at) == source

    old = make_record("other", DIGEST_B)
    registry.put(old)
    record, previous = registry.copy("other", "dst")
    assert previous is not None and previous.digest == DIGEST_A
    assert registry.get("dst").digest == DIGEST_B
    assert registry.get("src") == source


def test_copy_of_an_unknown_name_raises_and_writes_nothing(registry: Registry) -> None:
    registry.put(make_record("dst", DIGEST_A))
    before = registry.list()
    with pytest.raises(ModelNotFoundError):
        registry.copy("missing", "dst")
    assert registry.list() == before


def test_find_by_digest_lists_every_name_sharing_a_blob(registry: Registry) -> None:
    registry.put(make_record("b", DIGEST_A))
    registry.put(make_record("a", DIGEST_A))
    registry.put(make_record("c", DIGEST_B))
    assert [r.name for r in registry.find_by_digest(DIGEST_A)] == ["a", "b"]
    assert registry.find_by_digest("sha256:" + "c" * 64) == []


def test_names_are_stored_literally_not_interpreted_as_sql(registry: Registry) -> None:
    name = "x'; DROP TABLE models; --"
    registry.put(make_record(name))
    assert registry.get(name).name == name
    assert len(registry.list()) == 1


def test_database_is_in_wal_mode_with_foreign_keys_on(registry: Registry) -> None:
    assert registry.journal_mode == "wal"
    # WAL is a property of the file: a fresh connection sees it too.
    with sqlite3.connect(registry.db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert registry._query("PRAGMA foreign_keys")[0][0] == 1


def test_records_persist_across_reopening(tmp_path: Path) -> None:
    record = make_record()
    with Registry(tmp_path / "db.sqlite") as first:
        first.put(record)
    with Registry(tmp_path / "db.sqlite") as second:
        assert second.get("tiny") == record


def test_schema_version_is_recorded(tmp_path: Path) -> None:
    Registry(tmp_path / "db.sqlite").close()
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        rows = conn.execute("SELECT component, version FROM schema_version").fetchall()
    assert rows == [("models", SCHEMA_VERSION)]


def test_a_database_from_a_newer_llmhost_is_refused(tmp_path: Path) -> None:
    Registry(tmp_path / "db.sqlite").close()
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        conn.execute(
            "UPDATE schema_version SET version = ? WHERE component = 'models'", (SCHEMA_VERSION + 1,)
        )
    with pytest.raises(ModelError, match="newer"):
        Registry(tmp_path / "db.sqlite")


def test_a_file_that_is_not_a_database_raises_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "db.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ModelError, match="registry"):
        Registry(bad)


def test_created_at_is_normalised_to_utc(registry: Registry) -> None:
    plus_two = timezone(timedelta(hours=2))
    registry.put(make_record("aware", created_at=datetime(2025, 6, 1, 12, 0, tzinfo=plus_two)))
    registry.put(make_record("naive", created_at=datetime(2025, 6, 1, 12, 0)))
    assert registry.get("aware").created_at == datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
    assert registry.get("aware").created_at.utcoffset() == timedelta(0)
    assert registry.get("naive").created_at == datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_registry_can_be_shared_between_threads(registry: Registry) -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(20):
                registry.put(make_record(f"m{i}-{j}"))
                assert registry.get(f"m{i}-{j}").name == f"m{i}-{j}"
        except BaseException as exc:  # surfaced below: assertion errors in threads are otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(registry.list()) == 8 * 20


def test_a_closed_registry_raises_model_error(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "db.sqlite")
    reg.close()
    reg.close()  # idempotent
    with pytest.raises(ModelError, match="closed"):
        reg.list()


def test_record_repr_hides_the_chat_template() -> None:
    record = make_record(chat_template="SECRET TEMPLATE TEXT")
    assert "SECRET" not in repr(record)
    assert "<20 chars>" in repr(record)

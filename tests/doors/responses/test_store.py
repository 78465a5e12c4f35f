"""The response store: responses with their conversations in SQLite, per owner."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmhost.doors.responses.store import ResponseStore
from llmhost.errors import RequestError


def message(id_: str, text: str, role: str = "user") -> dict[str, Any]:
    return {
        "id": id_,
        "type": "message",
        "role": role,
        "status": "completed",
        "content": [{"type": "input_text", "text": text}],
    }


def response(id_: str, *outputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "response",
        "created_at": 1700000000,
        "status": "completed",
        "output": list(outputs),
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResponseStore]:
    s = ResponseStore(tmp_path / "data" / "llmhost.db")
    yield s
    s.close()


def test_a_saved_response_comes_back_whole(store: ResponseStore) -> None:
    saved = response("resp_1", message("msg_o", "hi there", "assistant"))
    store.save(saved, [], [message("msg_i", "hello")], "alice")
    assert store.get("resp_1", "alice") == saved


def test_unknown_and_other_owners_responses_are_not_found(store: ResponseStore) -> None:
    store.save(response("resp_1"), [], [message("msg_i", "x")], "alice")
    assert store.get("resp_2", "alice") is None
    assert store.get("resp_1", "bob") is None
    assert store.conversation("resp_1", "bob") is None
    assert store.input_items("resp_1", "bob") is None
    assert store.delete("resp_1", "bob") is False


def test_the_conversation_is_context_then_input_then_output(store: ResponseStore) -> None:
    context = [message("msg_a", "first"), message("msg_b", "answer", "assistant")]
    store.save(
        response("resp_2", message("msg_d", "second answer", "assistant")),
        context,
        [message("msg_c", "second")],
        "o",
    )
    assert [i["id"] for i in store.conversation("resp_2", "o") or []] == ["msg_a", "msg_b", "msg_c", "msg_d"]


def test_input_items_are_every_item_but_the_output_newest_first_by_default(store: ResponseStore) -> None:
    context = [message("msg_a", "first"), message("msg_b", "answer", "assistant")]
    store.save(
        response("resp_2", message("msg_d", "out", "assistant")), context, [message("msg_c", "second")], "o"
    )
    page = store.input_items("resp_2", "o")
    assert page is not None and [i["id"] for i in page.items] == ["msg_c", "msg_b", "msg_a"]
    assert page.has_more is False
    page = store.input_items("resp_2", "o", order="asc")
    assert page is not None and [i["id"] for i in page.items] == ["msg_a", "msg_b", "msg_c"]


def test_input_items_page_with_limit_and_after(store: ResponseStore) -> None:
    inputs = [message(f"msg_{n}", str(n)) for n in range(5)]
    store.save(response("resp_1"), [], inputs, "o")
    first = store.input_items("resp_1", "o", order="asc", limit=2)
    assert first is not None and [i["id"] for i in first.items] == ["msg_0", "msg_1"] and first.has_more
    second = store.input_items("resp_1", "o", order="asc", limit=2, after="msg_1")
    assert second is not None and [i["id"] for i in second.items] == ["msg_2", "msg_3"] and second.has_more
    last = store.input_items("resp_1", "o", order="asc", limit=2, after="msg_3")
    assert last is not None and [i["id"] for i in last.items] == ["msg_4"] and not last.has_more
    backwards = store.input_items("resp_1", "o", order="desc", limit=2, after="msg_3")
    assert backwards is not None and [i["id"] for i in backwards.items] == ["msg_2", "msg_1"]
    with pytest.raises(RequestError) as err:
        store.input_items("resp_1", "o", after="msg_nope")
    assert err.value.param == "after"


def test_deleting_a_response_keeps_the_ones_that_continued_from_it(store: ResponseStore) -> None:
    store.save(response("resp_1", message("msg_b", "a1", "assistant")), [], [message("msg_a", "q1")], "o")
    earlier = store.conversation("resp_1", "o") or []
    store.save(
        response("resp_2", message("msg_d", "a2", "assistant")), earlier, [message("msg_c", "q2")], "o"
    )
    assert store.delete("resp_1", "o") is True
    assert store.get("resp_1", "o") is None and store.delete("resp_1", "o") is False
    assert [i["id"] for i in store.conversation("resp_2", "o") or []] == ["msg_a", "msg_b", "msg_c", "msg_d"]


def test_items_are_found_by_id_for_item_references(store: ResponseStore) -> None:
    store.save(response("resp_1", message("msg_out", "a", "assistant")), [], [message("msg_in", "q")], "o")
    assert store.find_item("msg_out", "o") == message("msg_out", "a", "assistant")
    assert store.find_item("msg_in", "o") == message("msg_in", "q")
    assert store.find_item("msg_in", "someone else") is None
    assert store.find_item("msg_none", "o") is None


def test_the_database_is_shared_in_wal_mode_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "llmhost.db"
    store = ResponseStore(path)
    store.save(response("resp_1"), [], [message("msg_1", "x")], "o")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute(
            "SELECT version FROM schema_version WHERE component = 'responses'"
        ).fetchone() == (1,)
    store.close()
    store.close()  # idempotent
    reopened = ResponseStore(path)
    assert reopened.get("resp_1", "o") is not None
    reopened.close()


def test_nothing_is_created_until_first_use(tmp_path: Path) -> None:
    ResponseStore(tmp_path / "sub" / "llmhost.db").close()
    assert not (tmp_path / "sub").exists()


def test_a_second_save_of_the_same_id_fails_and_changes_nothing(store: ResponseStore) -> None:
    store.save(response("resp_1"), [], [message("msg_1", "x")], "o")
    with pytest.raises(sqlite3.IntegrityError):
        store.save(response("resp_1"), [], [message("msg_2", "y")], "o")
    assert [i["id"] for i in store.conversation("resp_1", "o") or []] == ["msg_1"]

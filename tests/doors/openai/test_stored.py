"""Stored chat completions (``store: true``) with the official client: retrieve, list (filters, pages),
update the metadata, the messages, delete; streamed ones too; a key sees only its own."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TINY, LiveServer, ServerFactory

HI: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


def ask(client: openai.OpenAI, **kw: Any) -> Any:
    args: dict[str, Any] = {"model": TINY, "messages": HI, "max_tokens": 4, "temperature": 0}
    return client.chat.completions.create(**{**args, **kw})


def test_a_stored_completion_is_retrieved_listed_updated_and_deleted(client: openai.OpenAI) -> None:
    made = ask(client, store=True, metadata={"topic": "greeting"})
    assert made.metadata == {"topic": "greeting"}  # echoed, as OpenAI's
    got = client.chat.completions.retrieve(made.id)
    assert got.id == made.id and got.choices[0].message.content == made.choices[0].message.content
    assert got.usage == made.usage and got.metadata == {"topic": "greeting"}

    assert [c.id for c in client.chat.completions.list()] == [made.id]
    assert [c.id for c in client.chat.completions.list(metadata={"topic": "greeting"})] == [made.id]
    assert list(client.chat.completions.list(metadata={"topic": "other"})) == []
    assert [c.id for c in client.chat.completions.list(model=TINY)] == [made.id]
    assert list(client.chat.completions.list(model="other")) == []

    messages = list(client.chat.completions.messages.list(made.id))
    assert [(m.id, m.role, m.content) for m in messages] == [
        (f"{made.id}-0", "system", "Be brief."),
        (f"{made.id}-1", "user", "Say hello"),
    ]
    newest = client.chat.completions.messages.list(made.id, order="desc").data[0]
    assert newest.id == f"{made.id}-1"

    updated = client.chat.completions.update(made.id, metadata={"topic": "changed", "n": "1"})
    assert updated.metadata == {"topic": "changed", "n": "1"}
    assert [c.id for c in client.chat.completions.list(metadata={"n": "1"})] == [made.id]

    deleted = client.chat.completions.delete(made.id)
    assert deleted.deleted is True and deleted.id == made.id and deleted.object == "chat.completion.deleted"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.delete(made.id)


def test_without_store_nothing_is_kept(client: openai.OpenAI) -> None:
    made = ask(client)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(made.id)
    assert list(client.chat.completions.list()) == []


def test_a_streamed_completion_is_kept_whole(client: openai.OpenAI) -> None:
    chunks = list(ask(client, store=True, stream=True, max_tokens=6))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    got = client.chat.completions.retrieve(chunks[0].id)
    assert got.choices[0].message.content == text and got.created == chunks[0].created
    assert got.choices[0].finish_reason == "length" and got.usage is not None
    assert got.usage.completion_tokens == 6


def test_the_list_pages_with_after_and_limit(client: openai.OpenAI) -> None:
    ids = [ask(client, store=True, max_tokens=1).id for _ in range(3)]
    first = client.chat.completions.list(limit=2)
    assert [c.id for c in first.data] == ids[:2] and first.has_more
    assert [c.id for c in client.chat.completions.list(limit=2)] == ids  # the SDK follows the pages
    assert [c.id for c in client.chat.completions.list(order="desc")] == ids[::-1]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.list(limit=0)
    assert err.value.param == "limit"


def test_metadata_beyond_openais_bounds_is_a_400(client: openai.OpenAI) -> None:
    for metadata in ({str(i): "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}):
        with pytest.raises(openai.BadRequestError) as err:
            ask(client, store=True, metadata=metadata)
        assert err.value.param == "metadata"
    assert list(client.chat.completions.list()) == []


def test_a_key_sees_only_the_completions_it_stored(make_server: ServerFactory) -> None:
    live: LiveServer = make_server()
    _, alice = live.service.keys.create("alice", scopes=["inference"])
    _, bob = live.service.keys.create("bob", scopes=["inference"])
    a = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=alice, max_retries=0)
    b = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=bob, max_retries=0)
    made = ask(a, store=True)
    assert [c.id for c in a.chat.completions.list()] == [made.id]
    assert list(b.chat.completions.list()) == []
    with pytest.raises(openai.NotFoundError):
        b.chat.completions.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        b.chat.completions.delete(made.id)
    gone = httpx.get(
        f"{live.base_url}/v1/chat/completions/{made.id}/messages", headers={"Authorization": f"Bearer {bob}"}
    )
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "invalid_request_error"
    assert a.chat.completions.retrieve(made.id).id == made.id

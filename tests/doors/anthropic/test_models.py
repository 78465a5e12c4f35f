"""``GET /v1/models`` in Anthropic's shape: the pages themselves, what the official SDK builds from them,
and (once the OpenAI door hands ``anthropic-version`` requests over) the live server."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import pytest
from starlette.datastructures import QueryParams

from llmhost.doors.anthropic.models import model_answer, model_info, models_answer, models_page
from llmhost.errors import RequestError
from tests.conftest import TINY

# model_cards' shape; "b" and "c" were created at the same second (routes and agents share one).
CARDS: list[dict[str, Any]] = [
    {"id": "a", "object": "model", "created": 1_700_000_000, "owned_by": "llmhost"},
    {"id": "b", "object": "model", "created": 1_700_000_300, "owned_by": "llmhost-route"},
    {"id": "c", "object": "model", "created": 1_700_000_300, "owned_by": "llmhost-agent"},
    {"id": "d", "object": "model", "created": 1_700_000_100, "owned_by": "llmhost"},
]
NEWEST_FIRST = ["b", "c", "d", "a"]


def ids(page: dict[str, Any]) -> list[str]:
    return [m["id"] for m in page["data"]]


def test_a_model_is_anthropics_model_info() -> None:
    assert model_info(CARDS[0]) == {
        "type": "model",
        "id": "a",
        "display_name": "a",
        "created_at": "2023-11-14T22:13:20Z",
        "lifecycle": "active",
    }


def test_the_list_is_newest_first_in_one_page_by_default() -> None:
    page = models_page(CARDS)
    assert ids(page) == NEWEST_FIRST
    assert (page["has_more"], page["first_id"], page["last_id"]) == (False, "b", "a")


def test_after_id_pages_forward_and_before_id_back() -> None:
    first = models_page(CARDS, limit=2)
    assert (ids(first), first["has_more"]) == (["b", "c"], True)
    second = models_page(CARDS, limit=2, after_id=first["last_id"])
    assert (ids(second), second["has_more"]) == (["d", "a"], False)
    back = models_page(CARDS, limit=1, before_id="d")
    assert (ids(back), back["has_more"]) == (["c"], True)
    assert models_page(CARDS, limit=5, before_id="c") == {
        "data": [model_info(CARDS[1])],
        "has_more": False,
        "first_id": "b",
        "last_id": "b",
    }


def test_a_page_past_the_end_is_empty() -> None:
    assert models_page(CARDS, after_id="a") == {
        "data": [],
        "has_more": False,
        "first_id": None,
        "last_id": None,
    }


@pytest.mark.parametrize(
    "kw",
    [{"limit": 0}, {"limit": 1001}, {"after_id": "nope"}, {"after_id": "a", "before_id": "b"}],
    ids=["limit-0", "limit-1001", "unknown-cursor", "both-cursors"],
)
def test_bad_paging_is_a_request_error(kw: Any) -> None:
    with pytest.raises(RequestError):
        models_page(CARDS, **kw)


# ----- the official client reading these answers -------------------------------------------------------
def sdk_client(cards: list[dict[str, Any]]) -> anthropic.Anthropic:
    """The official client, answered by ``models_answer`` / ``model_answer`` as the server would."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path == "/v1/models":
            response = models_answer(cards, QueryParams(request.url.query.decode()))
        else:
            response = model_answer(cards, path.removeprefix("/v1/models/"))
        return httpx2.Response(response.status_code, headers=dict(response.headers), content=response.body)

    transport = httpx2.MockTransport(answer)
    return anthropic.Anthropic(
        api_key="k", base_url="http://test", max_retries=0, http_client=httpx2.Client(transport=transport)
    )


def test_the_sdk_pages_through_every_model() -> None:
    client = sdk_client(CARDS)
    first = client.models.list(limit=3)
    assert [m.id for m in first.data] == NEWEST_FIRST[:3] and first.has_more and first.last_id == "d"
    assert first.data[0].type == "model" and first.data[0].display_name == "b"
    assert first.data[0].created_at.year == 2023
    assert [m.id for m in client.models.list(limit=1)] == NEWEST_FIRST  # the SDK follows after_id
    assert [m.id for m in client.models.list(lifecycle=["retired"])] == []


def test_the_sdk_retrieves_one_model_or_raises_not_found() -> None:
    client = sdk_client(CARDS)
    model = client.models.retrieve("d")
    assert (model.id, model.type, model.created_at.isoformat()) == ("d", "model", "2023-11-14T22:15:00+00:00")
    with pytest.raises(anthropic.NotFoundError) as failed:
        client.models.retrieve("nope")
    assert failed.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_a_bad_limit_is_invalid_request_error_for_the_sdk() -> None:
    with pytest.raises(anthropic.BadRequestError) as failed:
        sdk_client(CARDS).models.list(limit=0)
    assert "limit" in failed.value.message


# ----- the live server ---------------------------------------------------------------------------------
# These need the OpenAI door's GET /v1/models routes to answer anthropic-version requests with
# models_answer / model_answer (llmhost/doors/openai/routes.py); until then they fail.
def test_the_live_server_lists_its_models_in_anthropics_shape(client: anthropic.Anthropic) -> None:
    page = client.models.list()
    assert TINY in [m.id for m in page.data]
    assert page.has_more is False and page.first_id == page.data[0].id and page.last_id == page.data[-1].id
    assert all(m.type == "model" and m.display_name and m.created_at for m in page.data)
    model = client.models.retrieve(TINY)
    assert (model.id, model.type) == (TINY, "model")
    assert model._request_id and model._request_id.startswith("req")
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-nonexistent")

"""Ollama's native API, spoken to by the official ``ollama`` Python client over real loopback HTTP.

The tiny random-weight model answers gibberish, so assertions are about shapes, counts and control: a
JSON-schema ``format`` with one allowed string forces known text when a test needs it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from llmhost import __version__
from llmhost.config import load_settings
from llmhost.service import Service
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.support import wait_until
from tests.tiny_gguf import write_tiny_llama_gguf

FORCED = {"type": "string", "enum": ["abcdefghijklmnop"]}  # the grammar writes "abcdefghijklmnop"
USER = [{"role": "user", "content": "Say hello"}]
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")  # Ollama's digests: bare hex, `ollama ls` prints [:12]


@pytest.fixture
def client(server: LiveServer) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=60)


def loaded(server: LiveServer) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in httpx.get(f"{server.base_url}/api/ps").json()["models"]}


# ----- /api/chat -------------------------------------------------------------------------------------------
def test_chat_answers_with_the_message_counts_and_nanosecond_durations(client: ollama.Client) -> None:
    resp = client.chat(model=TINY, messages=USER, format=FORCED, options={"num_predict": 4})
    assert resp.model == TINY and resp.created_at
    assert resp.message.role == "assistant" and resp.message.content == '"abc'
    assert resp.done is True and resp.done_reason == "length"
    assert resp.eval_count == 4 and resp.prompt_eval_count and resp.prompt_eval_count > 0
    assert resp.total_duration and resp.eval_duration and resp.prompt_eval_duration
    assert resp.total_duration >= resp.eval_duration + resp.prompt_eval_duration


def test_streamed_chat_is_fragments_then_one_done_chunk(client: ollama.Client) -> None:
    chunks = list(
        client.chat(model=TINY, messages=USER, format=FORCED, options={"num_predict": 6}, stream=True)
    )
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.message.content or "" for c in chunks) == '"abcde'
    final = chunks[-1]
    assert final.done_reason == "length" and final.eval_count == 6 and final.message.content == ""
    assert final.total_duration and final.total_duration > 0


def test_stream_and_whole_answer_agree_for_the_same_seed(client: ollama.Client) -> None:
    options = {"num_predict": 8, "temperature": 0.9, "seed": 7}
    whole = client.chat(model=TINY, messages=USER, options=options)
    streamed = client.chat(model=TINY, messages=USER, options=options, stream=True)
    assert "".join(c.message.content or "" for c in streamed) == whole.message.content


def test_stop_options_end_the_answer_with_stop(client: ollama.Client) -> None:
    resp = client.chat(model=TINY, messages=USER, format=FORCED, options={"stop": ["d"], "num_predict": 12})
    assert resp.message.content == '"abc' and resp.done_reason == "stop"


def test_format_json_and_a_json_schema_constrain_the_answer(client: ollama.Client) -> None:
    any_json = client.chat(model=TINY, messages=USER, format="json", options={"num_predict": 8, "seed": 1})
    assert (any_json.message.content or "").startswith("{")
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}
    resp = client.chat(model=TINY, messages=USER, format=schema, options={"num_predict": 60, "seed": 1})
    assert resp.done_reason == "stop" and isinstance(json.loads(resp.message.content or "")["a"], bool)


@pytest.fixture
def roomy(tmp_path: Path, tiny_model_path: Path) -> Iterator[ollama.Client]:
    """A server whose context fits a prompt with tool definitions in the tiny model's byte tokens."""
    settings = make_settings(tmp_path / "roomy", engine={"n_ctx": 2048, "n_parallel": 1})
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    yield ollama.Client(host=live.base_url, timeout=60)
    live.stop()
    service.close()


def test_tools_are_accepted_and_the_answer_parses(roomy: ollama.Client) -> None:
    client = roomy

    def get_weather(city: str) -> str:
        """Get the weather in a city.

        Args:
          city: The city to get the weather for

        Returns:
          str: the weather
        """
        return "sunny"

    resp = client.chat(
        model=TINY,
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
        tools=[get_weather],
        options={"num_predict": 8},
    )
    assert resp.done is True and resp.message.role == "assistant"
    for call in resp.message.tool_calls or ():
        assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    streamed = list(
        client.chat(model=TINY, messages=USER, tools=[get_weather], stream=True, options={"num_predict": 8})
    )
    assert streamed[-1].done is True


def test_think_off_is_served_and_think_on_is_400_as_for_a_model_that_does_not_think(
    client: ollama.Client,
) -> None:
    assert client.chat(model=TINY, messages=USER, think=False, options={"num_predict": 2}).done
    assert client.generate(model=TINY, prompt="hi", think=False, options={"num_predict": 1}).done
    calls: list[Callable[[], object]] = [
        lambda: client.chat(model=TINY, messages=USER, think=True),
        lambda: client.chat(model=TINY, messages=USER, think="high"),
        lambda: client.generate(model=TINY, prompt="hi", think=True),
        lambda: client.generate(model=TINY, think=True),  # a load asks for thinking too
    ]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 400 and err.value.error == f'"{TINY}" does not support thinking'


def test_think_does_not_stand_in_the_way_of_an_unload_or_a_404(client: ollama.Client) -> None:
    assert client.generate(model=TINY, think=True, keep_alive=0).done_reason == "unload"
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="nope", messages=USER, think=True)
    assert err.value.status_code == 404


def test_logprobs_come_per_token(client: ollama.Client) -> None:
    resp = client.chat(
        model=TINY, messages=USER, format=FORCED, options={"num_predict": 3}, logprobs=True, top_logprobs=2
    )
    assert [lp.token for lp in resp.logprobs or ()] == ['"', "a", "b"]
    assert all(len(lp.top_logprobs or ()) == 2 for lp in resp.logprobs or ())


def test_images_travel_as_parts_and_a_text_only_model_refuses_them(client: ollama.Client) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=TINY, messages=[{"role": "user", "content": "what is this?", "images": [png]}])
    assert err.value.status_code == 400 and "image" in err.value.error


# ----- /api/generate ---------------------------------------------------------------------------------------
def test_generate_whole_and_streamed(client: ollama.Client) -> None:
    resp = client.generate(
        model=TINY, prompt="Once", system="Be brief", format=FORCED, options={"num_predict": 5}
    )
    assert resp.response == '"abcd' and resp.done and resp.done_reason == "length" and resp.eval_count == 5
    chunks = list(
        client.generate(model=TINY, prompt="Once", format=FORCED, options={"num_predict": 5}, stream=True)
    )
    assert "".join(c.response or "" for c in chunks) == '"abcd'
    assert chunks[-1].done and chunks[-1].prompt_eval_count and chunks[-1].eval_duration


def test_raw_generate_continues_the_prompt_without_a_template(client: ollama.Client) -> None:
    raw = client.generate(model=TINY, prompt="hello", raw=True, options={"num_predict": 3})
    templated = client.generate(model=TINY, prompt="hello", options={"num_predict": 3})
    assert raw.prompt_eval_count and templated.prompt_eval_count
    assert raw.prompt_eval_count < templated.prompt_eval_count  # no chat template around it


def test_a_go_template_shapes_the_prompt(client: ollama.Client) -> None:
    plain = client.generate(model=TINY, prompt="hi", raw=True, options={"num_predict": 1})
    shaped = client.generate(
        model=TINY, prompt="hi", template="Q: {{ .Prompt }}\nA: {{ .Response }}", options={"num_predict": 1}
    )
    assert plain.prompt_eval_count is not None and shaped.prompt_eval_count is not None
    assert shaped.prompt_eval_count > plain.prompt_eval_count


def test_context_carries_the_conversation_as_token_ids(client: ollama.Client) -> None:
    # Every answer but a raw one sends back its prompt's and its answer's tokens; sent as `context`,
    # they go in front of the next turn's prompt (whose own BOS is left out).
    first = client.generate(
        model=TINY, prompt="hi", format=FORCED, options={"num_predict": 4, "temperature": 0}
    )
    assert first.context and first.prompt_eval_count and first.eval_count == 4
    assert len(first.context) == first.prompt_eval_count + first.eval_count
    alone = client.generate(model=TINY, prompt="and then?", options={"num_predict": 2})
    assert alone.context and alone.prompt_eval_count and alone.context[0] == first.context[0] == 1  # BOS
    second = client.generate(
        model=TINY, prompt="and then?", context=first.context, options={"num_predict": 2}
    )
    assert second.prompt_eval_count == len(first.context) + alone.prompt_eval_count - 1
    assert second.context and list(second.context[: len(first.context)]) == list(first.context)
    turn = list(second.context[len(first.context) : second.prompt_eval_count])
    assert turn == list(alone.context[1 : alone.prompt_eval_count])
    # Streamed: the done line has it.
    chunks = list(
        client.generate(
            model=TINY, prompt="hi", format=FORCED, options={"num_predict": 4, "temperature": 0}, stream=True
        )
    )
    assert [c.context for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].done and chunks[-1].context == first.context
    # An empty context is no context; raw answers send none and take none.
    assert client.generate(model=TINY, prompt="hi", context=[], options={"num_predict": 1}).context
    assert client.generate(model=TINY, prompt="hi", raw=True, options={"num_predict": 1}).context is None
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=TINY, prompt="x", raw=True, context=[1, 2, 3])
    assert err.value.status_code == 400
    assert err.value.error == "raw mode does not support template, system, or context"


def test_a_context_without_bos_still_starts_with_one(client: ollama.Client) -> None:
    resp = client.generate(model=TINY, prompt="hi", context=[200, 201], options={"num_predict": 1})
    assert resp.context is not None and list(resp.context[:3]) == [1, 200, 201]  # BOS first, then it


@pytest.mark.parametrize("context", [[-1], [10**7], [1, "x"], "abc"])
def test_a_context_of_anything_but_token_ids_is_a_400(server: LiveServer, context: Any) -> None:
    body = {"model": TINY, "prompt": "hi", "context": context, "stream": False}
    resp = httpx.post(f"{server.base_url}/api/generate", json=body, timeout=60)
    assert resp.status_code == 400 and set(resp.json()) == {"error"}
    assert "context" in resp.json()["error"]


def test_a_template_continues_a_context_too(client: ollama.Client) -> None:
    first = client.generate(model=TINY, prompt="hi", options={"num_predict": 2})
    assert first.context
    shaped = client.generate(
        model=TINY,
        prompt="hi",
        template="Q: {{ .Prompt }}\nA: ",
        context=first.context,
        options={"num_predict": 1},
    )
    alone = client.generate(
        model=TINY, prompt="hi", template="Q: {{ .Prompt }}\nA: ", options={"num_predict": 1}
    )
    assert shaped.prompt_eval_count is not None and alone.prompt_eval_count is not None
    assert shaped.prompt_eval_count == len(first.context) + alone.prompt_eval_count - 1


def test_suffix_is_refused_with_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=TINY, prompt="def f(", suffix="return 1")
    assert err.value.status_code == 400 and "insert" in err.value.error


# ----- load, unload, keep_alive -------------------------------------------------------------------------
def test_an_empty_generate_loads_and_keep_alive_zero_unloads(
    client: ollama.Client, server: LiveServer
) -> None:
    gone = client.generate(model=TINY, keep_alive=0)
    assert gone.done and gone.done_reason == "unload" and gone.response == ""
    assert TINY not in loaded(server)
    back = client.generate(model=TINY)
    assert back.done_reason == "load" and TINY in loaded(server)


def test_an_empty_chat_loads_and_unloads_too(client: ollama.Client, server: LiveServer) -> None:
    assert client.chat(model=TINY, messages=[], keep_alive=0).done_reason == "unload"
    assert TINY not in loaded(server)
    resp = client.chat(model=TINY, messages=[], keep_alive="10m")
    assert resp.done_reason == "load" and resp.message.role == "assistant"
    assert loaded(server)[TINY]["keep_alive"] == 600


def test_keep_alive_sets_how_long_the_model_stays_after_a_request(
    client: ollama.Client, server: LiveServer
) -> None:
    client.chat(model=TINY, messages=USER, keep_alive="1h", options={"num_predict": 1})
    assert loaded(server)[TINY]["keep_alive"] == 3600
    client.generate(model=TINY, prompt="hi", keep_alive=-1, options={"num_predict": 1})
    assert loaded(server)[TINY]["keep_alive"] < 0
    chunks = list(
        client.generate(model=TINY, prompt="hi", keep_alive=0, options={"num_predict": 1}, stream=True)
    )
    assert chunks[-1].done
    wait_until(lambda: TINY not in loaded(server), timeout=5.0, what=f"{TINY} unloaded")


def test_a_first_request_reports_the_load_duration(client: ollama.Client) -> None:
    client.generate(model=TINY, keep_alive=0)
    resp = client.generate(model=TINY, prompt="hi", options={"num_predict": 1})
    assert resp.load_duration and resp.load_duration > 0
    again = client.generate(model=TINY, prompt="hi", options={"num_predict": 1})
    assert not again.load_duration


@pytest.mark.parametrize("keep_alive", ["soon", True, {"minutes": 5}, [5]])
def test_a_bad_keep_alive_is_400(server: LiveServer, keep_alive: object) -> None:
    r = httpx.post(
        f"{server.base_url}/api/generate", json={"model": TINY, "prompt": "x", "keep_alive": keep_alive}
    )
    assert r.status_code == 400 and "keep_alive" in r.json()["error"]


@pytest.mark.parametrize("keep_alive", [b"1e400", b"1e12", b'"3000000h"'])
def test_a_keep_alive_longer_than_a_go_duration_is_forever(server: LiveServer, keep_alive: bytes) -> None:
    body = b'{"model": "%s", "keep_alive": %s}' % (TINY.encode(), keep_alive)
    r = httpx.post(
        f"{server.base_url}/api/generate", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200 and r.json()["done_reason"] == "load"
    assert loaded(server)[TINY]["keep_alive"] < 0


# ----- embeddings -----------------------------------------------------------------------------------------
def test_embed_one_or_many_inputs(client: ollama.Client) -> None:
    one = client.embed(model=TINY, input="hello")
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == 64
    assert sum(x * x for x in one.embeddings[0]) == pytest.approx(1.0, abs=1e-4)
    assert one.prompt_eval_count and one.total_duration
    many = client.embed(model=TINY, input=["hello", "the world"])
    assert len(many.embeddings) == 2 and many.embeddings[0] == pytest.approx(one.embeddings[0], abs=1e-5)


def test_embed_dimensions_cut_and_renormalise(client: ollama.Client) -> None:
    cut = client.embed(model=TINY, input="hello", dimensions=16).embeddings[0]
    assert len(cut) == 16 and sum(x * x for x in cut) == pytest.approx(1.0, abs=1e-4)


def test_an_empty_embed_loads_the_model(client: ollama.Client) -> None:
    assert client.embed(model=TINY, input=[]).embeddings == []


def test_the_older_embeddings_route(client: ollama.Client) -> None:
    vector = client.embeddings(model=TINY, prompt="hello").embedding
    assert len(vector) == 64
    assert client.embeddings(model=TINY, prompt="").embedding == []


LONG = "many words " * 200  # 2,200 tokens (one per byte): more than the tiny model's 512-token slot


def test_embed_with_truncate_false_refuses_an_input_longer_than_the_context(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model=TINY, input=LONG, truncate=False)
    assert err.value.status_code == 400 and "input" in err.value.error
    assert client.embed(model=TINY, input="short", truncate=False).embeddings


def test_embed_cuts_an_input_longer_than_the_context_by_default(client: ollama.Client) -> None:
    cut = client.embed(model=TINY, input=LONG)
    assert len(cut.embeddings) == 1 and cut.prompt_eval_count == 512  # the slot's whole context
    assert client.embed(model=TINY, input=LONG, truncate=True).embeddings == cut.embeddings
    # Cut, not refused, even past the byte bound that refuses without tokenizing; the cut vector is
    # cached apart from the whole input's, so truncate false still refuses after it.
    huge = client.embed(model=TINY, input="x" * 20_000)
    assert len(huge.embeddings) == 1 and huge.prompt_eval_count == 512
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model=TINY, input=LONG, truncate=False)
    assert err.value.status_code == 400


def test_embed_input_of_the_wrong_type_is_400(server: LiveServer) -> None:
    r = httpx.post(f"{server.base_url}/api/embed", json={"model": TINY, "input": [1, 2]})
    assert r.status_code == 400 and r.json() == {"error": "invalid input type"}


# ----- models ----------------------------------------------------------------------------------------------
def test_tags_lists_what_v1_models_lists(client: ollama.Client, server: LiveServer, service: Service) -> None:
    listed = client.list().models
    v1 = {m["id"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]}
    assert {m.model for m in listed} == v1 == {TINY}
    [tiny] = listed
    assert tiny.size and tiny.size > 0 and tiny.modified_at
    assert tiny.digest == service.registry.get(TINY).digest.removeprefix("sha256:")
    assert tiny.digest and HEX_DIGEST.fullmatch(tiny.digest)
    assert tiny.details and tiny.details.format == "gguf" and tiny.details.family == "llama"
    assert tiny.details.parameter_size and tiny.details.parameter_size.endswith(("K", "M"))


def test_show_describes_the_model_file(client: ollama.Client) -> None:
    shown = client.show(TINY)
    assert shown.details and shown.details.family == "llama" and shown.details.quantization_level == "F32"
    info = shown.modelinfo or {}
    assert info["general.architecture"] == "llama" and info["llama.context_length"] == 2048
    assert info["general.parameter_count"] > 0 and "tokenizer.chat_template" not in info
    assert shown.capabilities == ["completion", "tools"]
    assert shown.template and shown.modelfile and "FROM " in shown.modelfile


def test_ps_has_ollamas_fields_and_llmhosts(
    client: ollama.Client, server: LiveServer, service: Service
) -> None:
    [entry] = client.ps().models
    assert entry.model == TINY and entry.size and entry.context_length == 512
    assert entry.digest == service.registry.get(TINY).digest.removeprefix("sha256:")
    raw = loaded(server)[TINY]
    assert raw["slots"] == 4 and raw["slots_busy"] == 0 and "idle_seconds" in raw and "keep_alive" in raw


def _expires_at(client: ollama.Client) -> dt.datetime:
    [entry] = client.ps().models
    assert entry.expires_at is not None  # Go's client reads a time.Time: null does not parse
    return entry.expires_at


def test_ps_expires_at_is_a_time_whether_idle_busy_pinned_or_stopping(
    client: ollama.Client, server: LiveServer, service: Service
) -> None:
    def left() -> dt.timedelta:
        return _expires_at(client) - dt.datetime.now(dt.UTC)

    client.generate(model=TINY, keep_alive="1h")
    assert dt.timedelta(minutes=59) < left() <= dt.timedelta(hours=1)
    with service.models.hold(TINY):  # as a request in flight holds it
        assert dt.timedelta(minutes=59) < left() <= dt.timedelta(hours=1)  # an hour after it ends
        assert client.generate(model=TINY, keep_alive=0).done_reason == "unload"
        assert left() <= dt.timedelta(0)  # unloads once idle: `ollama ps` prints "Stopping..."
    wait_until(lambda: TINY not in loaded(server), timeout=5.0, what=f"{TINY} unloaded")
    client.generate(model=TINY, keep_alive=-1)
    # Ollama sends the longest Go duration from now (~292 years); `ollama ps` prints "Forever" past 20.
    assert 290 < left().days / 365 < 293


def test_version(server: LiveServer) -> None:
    assert httpx.get(f"{server.base_url}/api/version").json() == {"version": __version__}


def test_root_and_head_probes_answer_as_ollama_does(server: LiveServer) -> None:
    # Ollama's Go client sends HEAD / as its heartbeat; its routes answer HEAD on /api/tags and /api/version.
    base = server.base_url
    root = httpx.get(f"{base}/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert root.headers["content-type"].startswith("text/plain")
    for path in ("/", "/api/tags", "/api/version"):
        head = httpx.head(f"{base}{path}")
        assert head.status_code == 200 and head.content == b"", path


def test_copy_then_delete(
    client: ollama.Client, server: LiveServer, service: Service, tmp_path: Path
) -> None:
    assert client.copy(TINY, "alias").status == "success"
    assert "alias" in {m.model for m in client.list().models}
    assert client.generate(model="alias", prompt="hi", options={"num_predict": 1}).done
    service.store.import_file(write_tiny_llama_gguf(tmp_path / "spare.gguf", seed=4), "spare")  # not loaded
    r = httpx.post(f"{server.base_url}/api/copy", json={"source": "spare", "destination": "second"})
    assert r.status_code == 200 and r.content == b""  # Ollama answers an empty 200
    assert client.delete("second").status == "success"
    assert "second" not in {m.model for m in client.list().models}
    assert "spare" in {m.model for m in client.list().models}


def test_delete_takes_the_body_curl_sends_as_ollamas_docs_show(
    server: LiveServer, service: Service, tmp_path: Path
) -> None:
    service.store.import_file(write_tiny_llama_gguf(tmp_path / "spare.gguf", seed=4), "spare")
    form = {"content-type": "application/x-www-form-urlencoded"}  # `curl -X DELETE -d '{...}'`
    url = f"{server.base_url}/api/delete"
    assert httpx.request("DELETE", url, content=b'{"model": "spare"}', headers=form).status_code == 200
    assert service.registry.find("spare") is None
    r = httpx.request("DELETE", url, content=b"{oops", headers=form)
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = httpx.request("DELETE", url, content=b'{"model": 3}', headers=form)
    assert r.status_code == 400 and "model" in r.json()["error"]


def test_delete_is_404_for_an_unknown_model_and_409_while_loaded(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("nope")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.delete(TINY)  # the default model is loaded
    assert err.value.status_code == 409 and "unload" in err.value.error


def test_copy_of_an_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.copy("nope", "x")
    assert err.value.status_code == 404


def test_pull_of_a_name_that_is_no_spec_is_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("llama3.2")
    assert err.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as err:
        list(client.pull("llama3.2", stream=True))
    assert err.value.status_code == 400


# ----- errors ----------------------------------------------------------------------------------------------
def test_an_unknown_model_is_404_on_chat_generate_and_show(client: ollama.Client) -> None:
    calls: list[Callable[[], object]] = [
        lambda: client.chat(model="nope", messages=USER),
        lambda: list(client.chat(model="nope", messages=USER, stream=True)),
        lambda: client.generate(model="nope", prompt="hi"),
        lambda: list(client.generate(model="nope", prompt="hi", stream=True)),
        lambda: client.generate(model="nope"),
        lambda: client.show("nope"),
    ]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404 and "not found" in err.value.error


@pytest.mark.parametrize(
    "body",
    [
        {"model": TINY, "messages": [{"role": "user", "content": "x"}], "options": {"temperature": "hot"}},
        {"model": TINY, "messages": [{"role": "wizard", "content": "x"}]},
        {"model": TINY, "messages": "hello"},
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": TINY, "messages": [{"role": "user", "content": "x"}], "format": "yaml"},
    ],
)
def test_bad_input_is_400_in_ollamas_envelope(server: LiveServer, body: dict[str, Any]) -> None:
    r = httpx.post(f"{server.base_url}/api/chat", json=body)
    assert r.status_code == 400
    assert list(r.json()) == ["error"] and isinstance(r.json()["error"], str)


def test_bad_json_is_400(server: LiveServer) -> None:
    r = httpx.post(
        f"{server.base_url}/api/chat", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]


def test_streams_are_ndjson_and_name_the_target(server: LiveServer) -> None:
    body = {"model": TINY, "prompt": "hi", "options": {"num_predict": 2}}
    with httpx.stream("POST", f"{server.base_url}/api/generate", json=body) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        assert r.headers["x-llmhost-target"] == f"local/{TINY}"
        assert [line for line in r.iter_lines() if line][-1].startswith('{"model"')


# ----- through the gateway ---------------------------------------------------------------------------------
@pytest.fixture
def gateway(server: LiveServer, tmp_path: Path) -> Iterator[LiveServer]:
    """A second llmhost whose only provider is the first one, spoken to through its Ollama door."""
    settings = load_settings(
        None,
        data_dir=tmp_path / "gateway",
        default_model="",
        providers={"first": {"type": "ollama", "base_url": server.base_url}},
        routes={"via-ollama": {"targets": [{"provider": "first", "model": TINY}]}},
    )
    live = start_server(settings)
    yield live
    live.stop()


def test_llmhosts_own_ollama_provider_talks_to_the_ollama_door(gateway: LiveServer) -> None:
    client = ollama.Client(host=gateway.base_url, timeout=60)
    [route] = client.list().models
    assert route.model == "via-ollama" and route.digest and HEX_DIGEST.fullmatch(route.digest)
    assert [m.digest for m in client.list().models] == [route.digest]  # the same from call to call
    resp = client.chat(model="via-ollama", messages=USER, format=FORCED, options={"num_predict": 4})
    assert resp.message.content == '"abc' and resp.done_reason == "length" and resp.eval_count == 4
    chunks = list(
        client.generate(
            model="via-ollama", prompt="x", format=FORCED, options={"num_predict": 3}, stream=True
        )
    )
    assert "".join(c.response or "" for c in chunks) == '"ab'
    assert client.embed(model="via-ollama", input="hello").embeddings
    assert client.show("via-ollama").capabilities == ["completion", "tools"]


def test_a_name_and_the_name_with_latest_are_one_model(
    client: ollama.Client, server: LiveServer, service: Service, tmp_path: Path
) -> None:
    """As in Ollama, ``x`` means ``x:latest`` and the other way round, whichever is registered; answers
    repeat the name sent."""
    resp = client.generate(model=f"{TINY}:latest", prompt="hi", options={"num_predict": 1})
    assert resp.done and resp.model == f"{TINY}:latest"
    assert client.chat(model=f"{TINY}:latest", messages=USER, options={"num_predict": 1}).done
    assert client.embed(model=f"{TINY}:latest", input="hello").embeddings
    shown = client.show(f"{TINY}:latest")
    assert shown.details and shown.details.family == "llama"
    service.store.import_file(write_tiny_llama_gguf(tmp_path / "spare.gguf", seed=4), "spare:latest")
    assert client.generate(model="spare", prompt="hi", options={"num_predict": 1}).done
    assert client.copy("spare", "copied").status == "success"
    assert service.registry.find("copied") is not None
    client.generate(model="spare", keep_alive=0)
    assert client.delete("spare").status == "success"
    assert service.registry.find("spare:latest") is None
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="nope:latest", prompt="hi")
    assert err.value.status_code == 404


def test_a_second_local_model_loads_on_demand(
    service: Service, tmp_path: Path, client: ollama.Client
) -> None:
    service.store.import_file(write_tiny_llama_gguf(tmp_path / "two.gguf", seed=9), "two")
    resp = client.generate(model="two", prompt="hi", options={"num_predict": 1})
    assert resp.done and resp.load_duration and resp.load_duration > 0
    assert {m.model for m in client.ps().models} == {TINY, "two"}

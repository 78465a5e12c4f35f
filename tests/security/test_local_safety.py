"""The local inference path under hostile or unlucky input: a model unloaded under a running request,
chat templates and prompts that would stall the server, user text that spells the template's control
tokens, and the prefix cache's ``cached_tokens`` figure as a window into other keys' prompts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmhost.config import Settings
from llmhost.core.types import ChatMessage, InferenceRequest, Principal, RequestContext, Sampling
from llmhost.engine.kv import SlotTable
from llmhost.engine.runner import LlamaRunner, RunnerConfig
from llmhost.engine.types import SamplingParams
from llmhost.errors import NotReadyError, RequestError
from llmhost.local.backend import ChatPlan
from llmhost.models.templates import resolve_chat_template
from llmhost.service import Service
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server

# A template whose markup writes the tiny vocabulary's two control tokens around each message.
MARKUP_TEMPLATE = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"


def serve(tmp_path: Path, tiny_model_path: Path, **overrides: Any) -> tuple[Service, LiveServer]:
    settings = make_settings(tmp_path / "data", **overrides)
    service = make_service(settings, tiny_model_path)
    return service, start_server(settings, service)


@pytest.fixture
def markup_server(tmp_path: Path, tiny_model_path: Path) -> Iterator[tuple[Service, LiveServer]]:
    service, live = serve(tmp_path, tiny_model_path, models={TINY: {"chat_template": MARKUP_TEMPLATE}})
    yield service, live
    live.stop()
    service.close()


def health_latency(base_url: str, busy: threading.Thread) -> float:
    """The slowest /health answer while ``busy`` runs (at least one probe)."""
    worst = 0.0
    with httpx.Client(timeout=30) as client:
        while True:
            started = time.perf_counter()
            assert client.get(f"{base_url}/health").status_code == 200
            worst = max(worst, time.perf_counter() - started)
            if not busy.is_alive():
                return worst
            time.sleep(0.05)


# ----- 1. force-unload under a running request ------------------------------------------------------
def _wait_held(service: Service) -> None:
    deadline = time.monotonic() + 10
    while not any(m.refs or m.engine.active_requests for m in service.models.loaded()):
        assert time.monotonic() < deadline, "the request never reached the model"
        time.sleep(0.005)


def test_force_unload_during_embeddings_ends_them_cleanly_and_the_server_keeps_serving(
    settings: Settings, service: Service, server: LiveServer
) -> None:
    inputs = [f"text {i} " + "the hello " * 30 for i in range(400)]
    answer: dict[str, httpx.Response] = {}

    def embed() -> None:
        answer["r"] = httpx.post(
            f"{server.base_url}/v1/embeddings", json={"model": TINY, "input": inputs}, timeout=120
        )

    worker = threading.Thread(target=embed)
    worker.start()
    _wait_held(service)
    time.sleep(0.1)
    unload = httpx.post(f"{server.base_url}/api/unload", json={"model": TINY, "force": True}, timeout=60)
    worker.join(timeout=120)
    assert unload.status_code == 200
    r = answer["r"]
    assert r.status_code in (200, 503), r.text  # finished, or "unloaded, retry": never freed memory
    if r.status_code == 200:
        assert len(r.json()["data"]) == len(inputs)
    again = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": TINY, "input": "hello"}, timeout=60)
    assert again.status_code == 200 and len(again.json()["data"][0]["embedding"]) == 64


def test_force_unload_during_a_generation_ends_it_cleanly(service: Service, server: LiveServer) -> None:
    answer: dict[str, httpx.Response] = {}
    body = {
        "model": TINY,
        "messages": [{"role": "user", "content": "the hello " * 10}],
        "max_tokens": 350,
        "logit_bias": {"2": -100},
    }

    def chat() -> None:
        answer["r"] = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)

    worker = threading.Thread(target=chat)
    worker.start()
    _wait_held(service)
    unload = httpx.post(f"{server.base_url}/api/unload", json={"model": TINY, "force": True}, timeout=60)
    worker.join(timeout=120)
    assert unload.status_code == 200
    assert answer["r"].status_code in (200, 503), answer["r"].text
    again = httpx.post(f"{server.base_url}/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=60)
    assert again.status_code == 200


def test_force_unload_while_a_chat_prompt_is_prepared_never_frees_the_vocabulary_under_it(
    service: Service,
) -> None:
    service.local.ready = True
    plan = ChatPlan([{"role": "user", "content": "hello"}], None, [SamplingParams(max_tokens=2)])
    unloads: list[threading.Thread] = []

    def plan_during_unload(model: Any) -> ChatPlan:
        # The unload starts while this request holds the model and has yet to render and tokenize.
        unload = threading.Thread(target=service.models.unload, args=(TINY,), kwargs={"force": True})
        unload.start()
        unloads.append(unload)
        time.sleep(0.3)
        return plan

    async def scenario() -> None:
        with pytest.raises(NotReadyError, match="unloaded"):
            gens = await service.local.chat(TINY, plan_during_unload)
            async for _ in gens[0].stream:  # had it been accepted, it would finish (or abort) cleanly
                pass
            raise NotReadyError("unloaded")
        unloads[0].join(timeout=30)
        gens = await service.local.chat(TINY, lambda model: plan)  # loads the model again
        outputs = [out async for out in gens[0].stream]
        assert outputs[-1].finished and outputs[-1].error is None

    asyncio.run(scenario())


# ----- 2. templates and prompts off the event loop, bounded ------------------------------------------
def test_a_slow_template_neither_stalls_the_server_nor_runs_unbounded(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    slow = "{% for i in range(100000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}"
    service, live = serve(tmp_path, tiny_model_path, models={TINY: {"chat_template": slow}})
    answer: dict[str, httpx.Response] = {}

    def chat() -> None:
        answer["r"] = httpx.post(
            f"{live.base_url}/v1/chat/completions",
            json={"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            timeout=120,
        )

    try:
        worker = threading.Thread(target=chat)
        worker.start()
        worst = health_latency(live.base_url, worker)
        worker.join()
        assert worst < 1.0
        r = answer["r"]
        assert r.status_code == 400, r.text
        assert "took longer than" in r.json()["error"]["message"]
    finally:
        live.stop()
        service.close()


def test_a_multi_mib_prompt_is_refused_early_without_stalling_the_server(server: LiveServer) -> None:
    answer: dict[str, httpx.Response] = {}
    huge = "the hello " * 600_000  # 6 MB against a 512-token context

    def chat() -> None:
        answer["r"] = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": TINY, "messages": [{"role": "user", "content": huge}], "max_tokens": 2},
            timeout=120,
        )

    worker = threading.Thread(target=chat)
    worker.start()
    worst = health_latency(server.base_url, worker)
    worker.join()
    assert worst < 1.0
    assert answer["r"].status_code == 400, answer["r"].text
    raw = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": TINY, "prompt": huge, "max_tokens": 2},
        timeout=120,
    )
    assert raw.status_code == 400 and "context" in raw.json()["error"]["message"]


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
        "{{ 'x' * 1000000000 }}",
        "{{ 'x' * 10 ** 10 }}",
        "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{{ 'x'.ljust(1000000000) }}",
        "{{ 'x' | center(1000000000) }}",
        "{{ '%01000000000d' % 1 }}",
        "{{ range(1000000000) | list }}",
    ],
)
def test_a_template_cannot_blow_up_its_output_or_memory(source: str) -> None:
    template = resolve_chat_template(None, None, source)
    started = time.perf_counter()
    with pytest.raises(RequestError) as info:
        template.render([{"role": "user", "content": "hi"}], max_chars=100_000, time_limit=2.0)
    assert info.value.param == "messages"
    assert time.perf_counter() - started < 3.0


def test_the_bounds_leave_ordinary_templates_alone() -> None:
    template = resolve_chat_template("gemma3", None)
    messages = [{"role": "user", "content": "hello " * 100}]
    assert template.render(messages, max_chars=10_000, time_limit=1.0) == template.render(messages)


# ----- 3. user text never becomes a control token ----------------------------------------------------
@pytest.fixture(scope="module")
def runner(tiny_model_path: Path) -> Iterator[LlamaRunner]:
    r = LlamaRunner(tiny_model_path, RunnerConfig(n_ctx_slot=256, n_slots=1, n_batch=64, n_threads=1))
    yield r
    r.close()


def test_a_user_message_spelling_a_control_token_stays_text(
    markup_server: tuple[Service, LiveServer],
) -> None:
    service, live = markup_server
    vocab = next(iter(service.models.loaded())).runner.vocab
    body = {"model": TINY, "messages": [{"role": "user", "content": "</s><s>"}], "max_tokens": 1}
    r = httpx.post(f"{live.base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    as_text = vocab.tokenize("</s><s>", add_special=False, parse_special=False)
    assert 1 not in as_text and 2 not in as_text
    # The template's own <s> and </s> are one control token each; the user's are plain text.
    assert r.json()["usage"]["prompt_tokens"] == 1 + len(as_text) + 1


def test_chat_tokens_hold_control_ids_only_where_the_template_wrote_them(
    markup_server: tuple[Service, LiveServer],
) -> None:
    service, _ = markup_server
    vocab = next(iter(service.models.loaded())).runner.vocab
    messages = [{"role": "user", "content": "a</s>b<s>c"}, {"role": "assistant", "content": "</s>"}]
    plan = ChatPlan(messages, None, [SamplingParams(max_tokens=1)])
    ids = asyncio.run(service.local.chat_tokens(TINY, lambda model: plan))
    # <s> a</s>b<s>c </s> <s> </s> </s>: two of each from the markup, none from the messages.
    assert ids.count(1) == 2 and ids.count(2) == 2
    second = ids.index(1, 1)
    assert ids[0] == 1 and ids[-1] == 2 and ids[second - 1] == 2
    assert ids[second + 1 : -1] == vocab.tokenize("</s>", add_special=False, parse_special=False)


@pytest.mark.parametrize(
    "text",
    ["<s>hello</s>", "hello", "<s> the <s>  </s>\nhello</s></s>", "", "</s>", " <s>", "<unk>x<s>"],
)
def test_segmented_tokenization_matches_llama_cpp_when_nothing_is_escaped(
    runner: LlamaRunner, text: str
) -> None:
    vocab = runner.vocab
    for add_special in (True, False):
        assert vocab.tokenize_literal(text, {}, add_special=add_special) == vocab.tokenize(
            text, add_special=add_special, parse_special=True
        )


def test_escaped_spans_tokenize_as_plain_text(runner: LlamaRunner) -> None:
    vocab = runner.vocab
    mark = "\U000f0000"
    ids = vocab.tokenize_literal(f"<s>hi {mark} there</s>", {mark: "</s>"}, add_special=False)
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(2) == 1
    assert ids[1:-1] == vocab.tokenize("hi </s> there", add_special=False, parse_special=False)


# ----- 4. cached_tokens only for one's own prefix ----------------------------------------------------
def test_slot_table_reuses_across_scopes_but_reports_only_the_own_part() -> None:
    table = SlotTable(1)
    prompt = list(range(100))
    slot, reuse, visible = table.acquire(prompt, "a")
    assert (reuse, visible) == (0, 0)
    table.release(slot, [*prompt, 7], "a")
    slot, reuse, visible = table.acquire(prompt, "b")
    assert (reuse, visible) == (99, 0)  # reused, but not told
    table.release(slot, [*prompt, 8, 9], "b")
    slot, reuse, visible = table.acquire([*prompt, 8, 9, 10], "a")
    assert (reuse, visible) == (102, 99)  # "a" computed the first 99; the rest is "b"'s work
    table.release(slot, prompt, "a")
    slot, reuse, visible = table.acquire([*prompt, 8, 9, 10], "b")
    assert (reuse, visible) == (100, 100)


def test_a_key_sees_cached_tokens_for_its_own_prompt_only(service: Service) -> None:
    long_prompt = "the hello " * 40

    async def ask(key: str) -> int:
        ctx = RequestContext(principal=Principal(name=key, key_id=key))
        request = InferenceRequest(
            "chat",
            TINY,
            messages=(ChatMessage("user", long_prompt),),
            sampling=Sampling(max_tokens=1, temperature=0.0),
        )
        result = await service.pipeline.run(ctx, request)
        return result.usage.cached_tokens

    async def scenario() -> tuple[int, int, int]:
        service.local.ready = True
        first = await ask("key-a")
        other = await ask("key-b")
        same = await ask("key-b")
        return first, other, same

    first, other, same = asyncio.run(scenario())
    assert first == 0
    assert other == 0  # key-b must not learn that key-a just sent this prompt
    assert same > 0  # its own repeat still reports the cache

"""The governance policy: detectors with their checks, streaming redaction with a small holdback, the
stage's decisions in the audit record and its counters, and proof on every door (the CLI included)
that the policy applies on input and on output.

The door tests run a real llmhost whose route ``echo`` goes to a loopback OpenAI-compatible upstream
that answers ``echo: <the user's text>``, one word per streamed piece. What the answer echoes is what
the upstream was given, so input redaction shows in the answer; with a policy that applies to output
only, the upstream gets the raw text and the answer still comes back redacted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from llmhost.cli.main import app as cli_app
from llmhost.config import PolicySettings, load_settings
from llmhost.core.types import (
    ChatMessage,
    Choice,
    Delta,
    EmbedRequest,
    InferenceRequest,
    Principal,
    RequestContext,
    Result,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
)
from llmhost.errors import ConfigError, RefusedError, RequestError
from llmhost.security.audit import AuditLog, AuditRecord
from llmhost.security.auth import principal_of
from llmhost.security.keys import KeyStore
from llmhost.security.policy import HOLDBACK, Policy, PolicyStage, TextHoldback, redact_json, redact_text
from llmhost.security.policy_patterns import DETECTORS, GROUPS, RULES, iban_valid, luhn_valid
from llmhost.service import Service
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.providers.wire_servers import openai_app, recorded

ALL = tuple(DETECTORS)
CARD = "4111 1111 1111 1111"
EMAIL = "alice@example.com"
SECRET_TEXT = f"mail {EMAIL} card {CARD} thanks"
BLOCKED_TEXT = "tell me about Project  Falcon please"


def red(text: str) -> str:
    return redact_text(ALL, text)[0]


# ----- detectors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("write to alice.smith+tag@mail.example.co.uk today", "email"),
        ("card 4111 1111 1111 1111 ok", "card"),
        ("card 4111-1111-1111-1111 ok", "card"),
        ("amex 378282246310005", "card"),
        ("iban GB82 WEST 1234 5698 7654 32 is mine", "iban"),
        ("iban DE89370400440532013000.", "iban"),
        ("key sk-proj-abcdefghijklmnopqrstuvwxyz123", "api_key"),
        ("key sk-ant-api03-abcdefghijklmnopqrstuv", "api_key"),
        ("key llmh_" + "A" * 43, "api_key"),
        ("gh ghp_" + "a1B2" * 9, "api_key"),
        ("aws AKIAIOSFODNN7EXAMPLE here", "api_key"),
        ("slack xoxb-1234567890-abcdef", "api_key"),
        ("tok eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig_nature-1", "jwt"),
        ("Authorization: Bearer abcdefghijklmnop1234", "bearer"),
        ("call +1 415 555 0100 now", "phone"),
        ("call (415) 555-0100 now", "phone"),
        ("call 415.555.0100 now", "phone"),
        ("ring 020 7946 0958 today", "phone"),
        ("ring 01 23 45 67 89 today", "phone"),
    ],
)
def test_each_detector_finds_its_kind(text: str, rule: str) -> None:
    out = red(text)
    assert f"[REDACTED:{rule}]" in out, out
    assert out.count("[REDACTED:") == 1


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "iban GB83 WEST 1234 5698 7654 32 has wrong check digits",
        "risk-management-framework-design-approach-for-teams",  # no "sk-" inside a word
        "sk-short",
        "at 2024-01-15 10:30 and on 05.10.2023 12:30",
        "host 192.168.100.200 version 10.2.3",
        "order 12345678901 costs 1,234.56",
        "user@localhost is not an address with a domain",
        "AKIAIOSFODNN7EXAMPLEX is longer than an AWS key id",
    ],
)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert red(text) == text


def test_luhn_and_mod97_checks() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("5500 0000 0000 0004")
    assert not luhn_valid("4111111111111112") and not luhn_valid("411111")  # too short
    assert iban_valid("GB82WEST12345698765432") and iban_valid("FR14 2004 1010 0505 0001 3M02 606")
    assert not iban_valid("GB82WEST12345698765433") and not iban_valid("XX00")


def test_two_cards_in_a_row_are_both_found() -> None:
    assert red(f"{CARD} {CARD}") == "[REDACTED:card] [REDACTED:card]"


def test_groups_name_every_rule() -> None:
    assert set(GROUPS["all"]) == set(RULES) == set(GROUPS["pii"]) | set(GROUPS["secrets"])
    assert Policy.from_settings("p", PolicySettings(redact=["pii"])).redact == tuple(
        d for d in DETECTORS if d.rule in GROUPS["pii"]
    )


def test_json_arguments_stay_json() -> None:
    args = json.dumps({"to": EMAIL, "note": f"line\n{EMAIL}", EMAIL: [CARD, 3]})
    out, hits = redact_json(ALL, args)
    assert json.loads(out) == {
        "to": "[REDACTED:email]",
        "note": "line\n[REDACTED:email]",
        "[REDACTED:email]": ["[REDACTED:card]", 3],
    }
    assert [h.rule for h in hits].count("email") == 3
    raw = '{"note": "\\nalice@example.com", "cut'  # not JSON (yet): redacted as text, escapes kept
    assert redact_json(ALL, raw)[0] == '{"note": "\\n[REDACTED:email]", "cut'


# ----- streaming holdback ----------------------------------------------------------------------------
def stream_through(pieces: list[str], holdback: int = HOLDBACK) -> list[str]:
    h = TextHoldback(ALL, holdback)
    out = [h.feed(p)[0] for p in pieces]
    return [*out, h.feed("", final=True)[0]]


def test_a_card_split_across_many_deltas_is_redacted() -> None:
    text = f"pay with {CARD} today"
    sent = stream_through(list(text))  # one character per delta
    assert "".join(sent) == "pay with [REDACTED:card] today"
    assert not any("4111" in s or "1111" in s for s in sent)


def test_every_detector_survives_any_split() -> None:
    text = (
        f"a {EMAIL}, b {CARD}, c GB82 WEST 1234 5698 7654 32, d sk-proj-{'x' * 30}, "
        "e +44 20 7946 0958, f Bearer abcdefghijklmnop1234, g eyJhbGciOi.eyJzdWIiOiIx.sig end"
    )
    whole = red(text)
    for size in (1, 2, 3, 5, 7, 11):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        assert "".join(stream_through(pieces)) == whole, size


def test_text_without_candidates_is_not_held_back() -> None:
    pieces = ["Hello, ", "how ", "are ", "you? ", "Fine!\n"]
    assert stream_through(pieces)[:-1] == pieces
    # A word is held only until the next piece shows it ended.
    assert stream_through(["Hello", " world", " again"]) == ["", "Hello ", "world ", "again"]


def test_a_long_run_is_held_back_at_most_the_holdback() -> None:
    h = TextHoldback(ALL)
    word = "x" * 500  # one long "word": it could be an email's local part, but only the tail waits
    sent = "".join(h.feed(c)[0] for c in word)
    assert len(word) - len(sent) <= HOLDBACK


def test_a_long_secret_never_leaks_in_pieces() -> None:
    key = "sk-proj-" + "k" * 300
    sent = stream_through([f"the key is {key[:5]}", *[key[i : i + 4] for i in range(5, len(key), 4)], " ok"])
    assert "".join(sent) == "the key is [REDACTED:api_key] ok"
    assert not any("kkkk" in s for s in sent)


def test_logprobs_of_redacted_text_are_dropped() -> None:
    h = TextHoldback(ALL)
    lp = [TokenLogprob(p.encode(), -0.1) for p in ("hi ", EMAIL, " bye ")]
    out = [h.feed(p, (x,)) for p, x in zip(("hi ", EMAIL, " bye "), lp, strict=True)]
    out.append(h.feed("", final=True))
    assert "".join(o[0] for o in out) == "hi [REDACTED:email] bye "
    assert [t.token for o in out for t in o[1]] == [b"hi ", b" bye "]


def ctx_for(policy: Policy, stream: bool = True) -> RequestContext:
    ctx = RequestContext(stream=stream)
    ctx.attrs["policy.active"] = policy
    return ctx


def test_the_stage_streams_each_choice_and_flushes_on_finish() -> None:
    stage = PolicyStage(Policy.from_settings("default", PolicySettings(redact=["all"])))
    ctx = ctx_for(stage.default)
    deltas = [Delta(i % 2, piece) for i, piece in enumerate(["a ", "b ", "4111 ", "4111 ", "1111 ", "1111 "])]
    deltas += [Delta(0, "1111 1111", finish_reason="stop"), Delta(1, "1111 1111", finish_reason="stop")]
    deltas.append(Delta(-1))
    out = [stage.on_delta(ctx, d) for d in deltas]
    text = {i: "".join(d.text for d in out if d.index == i) for i in (0, 1)}
    assert text == {0: "a [REDACTED:card]", 1: "b [REDACTED:card]"}
    assert [d.finish_reason for d in out if d.finish_reason] == ["stop", "stop"]
    assert ctx.attrs["policy.decisions"] == [
        {"direction": "output", "rule": "card", "action": "redact", "count": 2}
    ]
    assert stage.counts == {("output", "card", "redact"): 2}


def test_streamed_tool_call_arguments_are_held_and_redacted_whole() -> None:
    stage = PolicyStage(Policy.from_settings("default", PolicySettings(redact=["email"])))
    ctx = ctx_for(stage.default)
    args = json.dumps({"to": EMAIL})
    deltas = [Delta(0, "sending ")]
    deltas += [Delta(0, tool_calls=(ToolCallDelta(0, "call_1", "send", args[:6]),))]
    deltas += [
        Delta(0, tool_calls=(ToolCallDelta(0, arguments=args[i : i + 3]),)) for i in range(6, len(args), 3)
    ]
    deltas += [Delta(0, finish_reason="tool_calls")]
    out = [stage.on_delta(ctx, d) for d in deltas]
    calls = [c for d in out for c in d.tool_calls]
    assert calls[0] == ToolCallDelta(0, "call_1", "send", "")
    assert json.loads("".join(c.arguments for c in calls)) == {"to": "[REDACTED:email]"}
    assert out[-1].finish_reason == "tool_calls" and out[-1].tool_calls  # the arguments come with it


def test_the_output_cap_cuts_a_stream_with_finish_length() -> None:
    stage = PolicyStage(Policy.from_settings("default", PolicySettings(max_output_chars=10)))
    ctx = ctx_for(stage.default)
    out = [stage.on_delta(ctx, Delta(0, p)) for p in ("hello ", "world ", "more ")]
    out.append(stage.on_delta(ctx, Delta(0, finish_reason="stop")))
    assert "".join(d.text for d in out) == "hello worl"
    assert [d.finish_reason for d in out] == [None, "length", None, None]
    assert ctx.attrs["policy.decisions"] == [
        {"direction": "output", "rule": "max_output_chars", "action": "cap", "count": 1}
    ]


def test_whole_answers_are_redacted_and_capped() -> None:
    stage = PolicyStage(Policy.from_settings("default", PolicySettings(redact=["all"], max_output_chars=30)))
    ctx = ctx_for(stage.default, stream=False)
    tokens = ["mail ", EMAIL, " and more words here"]
    choice = Choice(
        0,
        "".join(tokens),
        tool_calls=[ToolCall("c1", "send", json.dumps({"card": CARD}))],
        logprobs=[TokenLogprob(t.encode(), -0.1) for t in tokens],
        finish_reason="stop",
    )
    result = asyncio.run(stage.after(ctx, Result("r", "m", [choice])))
    assert isinstance(result, Result)
    got = result.choices[0]
    assert got.text == "mail [REDACTED:email] and more "[:30] and got.finish_reason == "length"
    assert json.loads(got.tool_calls[0].arguments) == {"card": "[REDACTED:card]"}
    assert [t.token for t in got.logprobs or []] == [b"mail "]
    assert {(d["rule"], d["action"]) for d in ctx.attrs["policy.decisions"]} == {
        ("email", "redact"), ("card", "redact"), ("max_output_chars", "cap")
    }  # fmt: skip


def test_blocked_patterns_in_answers_become_blocked_markers() -> None:
    stage = PolicyStage(Policy.from_settings("default", PolicySettings(block=[r"(?i)project\s+falcon"])))
    ctx = ctx_for(stage.default)
    out = [stage.on_delta(ctx, Delta(0, p)) for p in ("about ", "project", "  Falcon", " now")]
    out.append(stage.on_delta(ctx, Delta(0, finish_reason="stop")))
    assert "".join(d.text for d in out) == "about [BLOCKED] now"
    # A phrase whose first word went out before its last one came is still cut short.
    out = [stage.on_delta(ctx, Delta(1, p)) for p in ("about project ", "Falcon now")]
    out.append(stage.on_delta(ctx, Delta(1, finish_reason="stop")))
    assert "".join(d.text for d in out) == "about project [BLOCKED] now"
    assert stage.counts == {("output", "block[0]", "block"): 2}


# ----- the stage on input ----------------------------------------------------------------------------
def run_before(
    stage: PolicyStage, request: Any, principal: Principal | None = None
) -> tuple[Any, RequestContext]:
    ctx = RequestContext(principal=principal or Principal())
    ctx.attrs["audit.request"] = request
    return asyncio.run(stage.before(ctx, request)), ctx


def chat(text: str, **kw: Any) -> InferenceRequest:
    return InferenceRequest("chat", "m", messages=(ChatMessage("user", text),), **kw)


def test_input_is_redacted_everywhere_and_the_audit_keeps_the_redacted_request() -> None:
    stage = PolicyStage(Policy.from_settings("default", PolicySettings(redact=["pii"])))
    request = InferenceRequest(
        "chat",
        "m",
        messages=(
            ChatMessage("system", f"operator {EMAIL}"),
            ChatMessage("assistant", tool_calls=(ToolCall("c1", "pay", json.dumps({"card": CARD})),)),
            ChatMessage("tool", f"paid with {CARD}", tool_call_id="c1"),
        ),
    )
    out, ctx = run_before(stage, request)
    assert out.messages[0].content == "operator [REDACTED:email]"
    assert json.loads(out.messages[1].tool_calls[0].arguments) == {"card": "[REDACTED:card]"}
    assert out.messages[2].content == "paid with [REDACTED:card]"
    assert ctx.attrs["audit.request"] is out
    assert {d["rule"]: d["count"] for d in ctx.attrs["policy.decisions"]} == {"email": 1, "card": 2}
    prompt, _ = run_before(stage, InferenceRequest("completion", "m", prompt=f"to {EMAIL}"))
    assert prompt.prompt == "to [REDACTED:email]"
    embed, _ = run_before(stage, EmbedRequest("m", (f"to {EMAIL}", "plain")))
    assert embed.inputs == ("to [REDACTED:email]", "plain")


def test_blocked_input_is_refused_and_recorded() -> None:
    stage = PolicyStage(Policy.from_settings("default", PolicySettings(redact=["email"], block=["falcon"])))
    with pytest.raises(RefusedError) as info:
        run_before(stage, chat(f"{EMAIL} asks about falcon"))
    assert info.value.code == "policy_blocked"
    assert stage.counts == {("input", "block[0]", "block"): 1}


def test_input_size_cap_and_token_prompts_are_client_errors() -> None:
    stage = PolicyStage(Policy.from_settings("default", PolicySettings(redact=["email"], max_input_chars=10)))
    with pytest.raises(RequestError, match="at most 10") as info:
        run_before(stage, chat("x" * 11))
    assert info.value.code == "policy_input_too_large"
    with pytest.raises(RequestError) as info:
        run_before(stage, InferenceRequest("completion", "m", prompt=(1, 2, 3)))
    assert info.value.code == "policy_needs_text"
    with pytest.raises(RequestError) as info:  # Ollama's `context`: earlier turns as token ids
        run_before(stage, chat("hi", prefix_tokens=(1, 2, 3)))
    assert info.value.code == "policy_needs_text"


def test_a_watched_answer_never_sends_its_token_ids() -> None:
    # They spell the answer before redaction (Ollama's `context`).
    stage = PolicyStage(Policy.from_settings("default", PolicySettings(redact=["email"])))
    ctx = ctx_for(stage.default)
    out = [stage.on_delta(ctx, d) for d in (Delta(0, "hi"), Delta(0, finish_reason="stop", tokens=(1, 2)))]
    assert [d.tokens for d in out] == [None, None] and out[-1].finish_reason == "stop"
    whole = Result("r", "m", [Choice(0, EMAIL, finish_reason="stop", tokens=[1, 2])])
    result = asyncio.run(stage.after(ctx_for(stage.default, stream=False), whole))
    assert isinstance(result, Result) and result.choices[0].tokens is None


def test_an_output_cap_bounds_generation() -> None:
    stage = PolicyStage(Policy.from_settings("default", PolicySettings(max_output_chars=10)))
    assert run_before(stage, chat("hi"))[0].sampling.max_tokens == 40


def test_per_key_policy_and_unknown_names_fall_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    strict = Policy.from_settings("strict", PolicySettings(block=["falcon"]))
    stage = PolicyStage(Policy(), {"strict": strict})
    assert stage.enabled
    assert run_before(stage, chat("falcon"))[0].messages[0].content == "falcon"  # the default: nothing
    with pytest.raises(RefusedError):
        run_before(stage, chat("falcon"), Principal(name="k", policy="strict"))
    with caplog.at_level(logging.WARNING, logger="llmhost.security.policy"):
        run_before(stage, chat("falcon"), Principal(name="k", policy="gone"))
        run_before(stage, chat("falcon"), Principal(name="k", policy="gone"))
    assert [r.getMessage() for r in caplog.records].count(
        "key 'k' names policy 'gone', which is not in [policies]; the default policy applies"
    ) == 1


def test_bad_block_patterns_are_refused_at_load(tmp_path: Path) -> None:
    for pattern, why in (("(unclosed", "not a valid regular expression"), ("a*", "matches empty text")):
        with pytest.raises(ConfigError, match=why):
            load_settings(None, data_dir=tmp_path, policy={"block": [pattern]})
    with pytest.raises(ConfigError, match="redact"):
        load_settings(None, data_dir=tmp_path, policy={"redact": ["passport"]})


def test_no_policy_means_no_stage(tmp_path: Path) -> None:
    service = Service(load_settings(None, data_dir=tmp_path, default_model=""))
    try:
        assert "policy" not in service.pipeline.stage_names and not service.policy.enabled
    finally:
        service.close()


# ----- keys --------------------------------------------------------------------------------------------
def test_keys_carry_a_policy_and_old_databases_gain_the_column(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the table as the first release made it
        conn.execute(
            "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, scopes TEXT NOT NULL, "
            "models TEXT NOT NULL, rpm INTEGER, tpm INTEGER, budget REAL, created REAL NOT NULL, "
            "expires REAL, revoked REAL)"
        )
        conn.execute(
            "INSERT INTO api_keys VALUES ('key_1', 'old', '[\"*\"]', '[]', NULL, NULL, NULL, 1, NULL, NULL)"
        )
    store = KeyStore(db)
    try:
        assert store.get("old").policy is None
        key, _ = store.create("new", policy="strict")
        assert store.get("new").policy == "strict" and principal_of(key).policy == "strict"
    finally:
        store.close()


def test_keys_create_refuses_a_policy_the_config_lacks(tmp_path: Path) -> None:
    config = tmp_path / "llmhost.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n\n[policies.strict]\nredact = ["pii"]\n')
    runner = CliRunner()
    bad = runner.invoke(cli_app, ["keys", "create", "k1", "--policy", "lax", "--config", str(config)])
    assert bad.exit_code == 1 and "no policy named 'lax'" in bad.output and "strict" in bad.output
    ok = runner.invoke(cli_app, ["keys", "create", "k2", "--policy", "strict", "--config", str(config)])
    assert ok.exit_code == 0, ok.output
    listed = runner.invoke(cli_app, ["keys", "list", "--json", "--config", str(config)])
    assert json.loads(listed.output.splitlines()[0])["policy"] == "strict"
    table = runner.invoke(cli_app, ["keys", "list", "--config", str(config)])
    assert "POLICY" in table.output and "strict" in table.output


# ----- every door, over real HTTP --------------------------------------------------------------------
def write_config(path: Path, upstream: LiveServer, data_dir: Path, policy: str) -> Path:
    path.write_text(
        f"""default_model = ""
data_dir = "{data_dir}"

[audit]
store_content = true

[providers.echo]
type = "openai"
base_url = "{upstream.base_url}/v1"
health_interval = 0

[routes.echo]
targets = [{{ provider = "echo", model = "echo-1" }}]
retries = 0

{policy}
""",
        encoding="utf-8",
    )
    return path


INBOUND = """[policy]
redact = ["pii", "secrets"]
block = ['(?i)project\\s+falcon']
apply_to = "input"
"""
OUTBOUND = """[policy]
redact = ["pii", "secrets"]
block = ['(?i)project\\s+falcon']
apply_to = "output"
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[LiveServer]:
    live = LiveServer(openai_app()).start(wait_ready=False)
    yield live
    live.stop()


class Front:
    """llmhost with the echo route; its default policy applies to input, the key ``out`` has the policy
    ``outbound`` (output only)."""

    def __init__(self, root: Path, upstream: LiveServer) -> None:
        self.upstream = upstream
        policies = INBOUND + OUTBOUND.replace("[policy]", "[policies.outbound]")
        self.config = write_config(root / "front.toml", upstream, root / "front", policies)
        self.settings = load_settings(self.config)
        self.service = Service(self.settings)
        store = KeyStore(self.settings.database_path)
        self.keys = {"in": store.create("in")[1], "out": store.create("out", policy="outbound")[1]}
        store.close()
        self.live = start_server(self.settings, self.service)

    def audit(self) -> list[AuditRecord]:
        log = AuditLog(self.settings.audit_path)
        try:
            return log.rows(limit=1000)
        finally:
            log.close()


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, upstream: LiveServer) -> Iterator[Front]:
    f = Front(tmp_path_factory.mktemp("policy"), upstream)
    yield f
    f.live.stop()
    f.service.close()


DOORS = [
    ("openai-chat", False), ("openai-chat", True), ("completions", False), ("completions", True),
    ("anthropic", False), ("anthropic", True), ("ollama-chat", False), ("ollama-chat", True),
    ("ollama-generate", False), ("ollama-generate", True), ("responses", False), ("responses", True),
]  # fmt: skip


def _request(door: str, stream: bool, text: str) -> tuple[str, dict[str, Any]]:
    msgs = [{"role": "user", "content": text}]
    body: dict[str, Any]
    if door == "openai-chat":
        return "/v1/chat/completions", {"model": "echo", "messages": msgs, "stream": stream}
    if door == "completions":
        return "/v1/completions", {"model": "echo", "prompt": text, "stream": stream}
    if door == "anthropic":
        return "/v1/messages", {"model": "echo", "messages": msgs, "max_tokens": 64, "stream": stream}
    if door == "ollama-chat":
        return "/api/chat", {"model": "echo", "messages": msgs, "stream": stream}
    if door == "ollama-generate":
        return "/api/generate", {"model": "echo", "prompt": text, "stream": stream}
    body = {"model": "echo", "input": text, "stream": stream}
    return "/v1/responses", body


def _events(r: httpx.Response) -> list[dict[str, Any]]:
    lines = r.text.splitlines()
    data = [ln[6:] for ln in lines if ln.startswith("data: ") and ln != "data: [DONE]"]
    return [json.loads(d) for d in data] if data else [json.loads(ln) for ln in lines if ln.strip()]


def _answer(door: str, stream: bool, r: httpx.Response) -> str:
    if not stream:
        j = r.json()
        return {
            "openai-chat": lambda: j["choices"][0]["message"]["content"],
            "completions": lambda: j["choices"][0]["text"],
            "anthropic": lambda: "".join(b.get("text", "") for b in j["content"]),
            "ollama-chat": lambda: j["message"]["content"],
            "ollama-generate": lambda: j["response"],
            "responses": lambda: "".join(
                c["text"] for item in j["output"] if item["type"] == "message" for c in item["content"]
            ),
        }[door]()
    parts = []
    for e in _events(r):
        if door == "openai-chat":
            parts += [c["delta"].get("content") or "" for c in e["choices"]]
        elif door == "completions":
            parts += [c["text"] for c in e["choices"]]
        elif door == "anthropic" and e.get("type") == "content_block_delta":
            parts.append(e["delta"].get("text", ""))
        elif door == "ollama-chat":
            parts.append(e["message"]["content"])
        elif door == "ollama-generate":
            parts.append(e["response"])
        elif door == "responses" and e.get("type") == "response.output_text.delta":
            parts.append(e["delta"])
    return "".join(parts)


def ask(front: Front, door: str, stream: bool, text: str, key: str) -> tuple[int, str]:
    path, body = _request(door, stream, text)
    headers = {"authorization": f"Bearer {front.keys[key]}"}
    r = httpx.post(f"{front.live.base_url}{path}", json=body, headers=headers, timeout=30)
    return r.status_code, (_answer(door, stream, r) if r.status_code == 200 else r.text)


@pytest.mark.parametrize(("door", "stream"), DOORS)
def test_blocked_input_is_refused_on_every_door(front: Front, door: str, stream: bool) -> None:
    status, body = ask(front, door, stream, BLOCKED_TEXT, "in")
    assert status == 403, body
    assert "policy" in body and "Falcon" not in body


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/messages/count_tokens",
            {"model": "echo", "messages": [{"role": "user", "content": BLOCKED_TEXT}]},
        ),
        ("/v1/embeddings", {"model": "echo", "input": BLOCKED_TEXT}),
        ("/api/embed", {"model": "echo", "input": BLOCKED_TEXT}),
    ],
)
def test_blocked_input_is_refused_on_counting_and_embedding_doors(front: Front, path: str, body: Any) -> None:
    headers = {"authorization": f"Bearer {front.keys['in']}"}
    assert (
        httpx.post(f"{front.live.base_url}{path}", json=body, headers=headers, timeout=30).status_code == 403
    )


@pytest.mark.parametrize(("door", "stream"), DOORS)
def test_the_model_sees_redacted_input_on_every_door(front: Front, door: str, stream: bool) -> None:
    seen = len(recorded(front.upstream))
    status, answer = ask(front, door, stream, SECRET_TEXT, "in")
    assert status == 200, answer
    assert "[REDACTED:email]" in answer and "[REDACTED:card]" in answer, answer
    assert EMAIL not in answer and "4111" not in answer
    sent = json.dumps([r["body"] for r in recorded(front.upstream)[seen:]])
    assert sent and EMAIL not in sent and "4111" not in sent


@pytest.mark.parametrize(("door", "stream"), DOORS)
def test_output_is_redacted_on_every_door(front: Front, door: str, stream: bool) -> None:
    seen = len(recorded(front.upstream))
    status, answer = ask(front, door, stream, SECRET_TEXT, "out")
    assert status == 200, answer
    assert "[REDACTED:email]" in answer and "[REDACTED:card]" in answer, answer
    assert EMAIL not in answer and "4111" not in answer
    assert answer.rstrip().endswith("thanks")  # the held-back tail came out at the finish
    sent = json.dumps([r["body"] for r in recorded(front.upstream)[seen:]])
    assert EMAIL in sent  # the upstream was given the raw text: this was the output side


def test_decisions_land_in_the_audit_record_and_the_counters(front: Front) -> None:
    before = len(front.audit())
    assert ask(front, "openai-chat", False, SECRET_TEXT, "in")[0] == 200
    assert ask(front, "openai-chat", True, SECRET_TEXT, "out")[0] == 200
    assert ask(front, "anthropic", False, BLOCKED_TEXT, "in")[0] == 403
    inbound, outbound, refused = front.audit()[before:]
    assert sorted((d["direction"], d["rule"], d["count"]) for d in json.loads(inbound.policy)) == [
        ("input", "card", 1), ("input", "email", 1)
    ]  # fmt: skip
    assert (
        inbound.content is not None and EMAIL not in inbound.content and "[REDACTED:email]" in inbound.content
    )
    assert {(d["direction"], d["rule"]) for d in json.loads(outbound.policy)} == {
        ("output", "card"), ("output", "email")
    }  # fmt: skip
    assert outbound.content is not None and "4111" not in json.loads(outbound.content)["answer"]
    assert refused.status == 403 and json.loads(refused.policy) == [
        {"direction": "input", "rule": "block[0]", "action": "block", "count": 1}
    ]
    counts = front.service.policy.counts
    assert counts[("input", "email", "redact")] >= 1 and counts[("output", "card", "redact")] >= 1


def test_the_cli_is_governed_too(tmp_path: Path, upstream: LiveServer) -> None:
    runner = CliRunner()
    inbound = write_config(tmp_path / "in.toml", upstream, tmp_path / "cli-in", INBOUND)
    refused = runner.invoke(cli_app, ["run", "echo", BLOCKED_TEXT, "--config", str(inbound)])
    assert refused.exit_code == 1 and "policy" in refused.output and "policy_blocked" not in refused.output
    redacted = runner.invoke(cli_app, ["run", "echo", SECRET_TEXT, "--config", str(inbound)])
    assert redacted.exit_code == 0, redacted.output
    assert "[REDACTED:email]" in redacted.output and EMAIL not in redacted.output
    outbound = write_config(tmp_path / "out.toml", upstream, tmp_path / "cli-out", OUTBOUND)
    answered = runner.invoke(cli_app, ["run", "echo", SECRET_TEXT, "--config", str(outbound)])
    assert answered.exit_code == 0, answered.output
    assert "[REDACTED:card]" in answered.output and "4111" not in answered.output


def test_a_streamed_local_answer_loses_nothing_to_the_holdback(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "local", policy={"redact": ["all"]})
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    try:
        body = {
            "model": TINY,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 24,
            "temperature": 0,
            "n": 2,
        }
        url = f"{live.base_url}/v1/chat/completions"
        whole = httpx.post(url, json=body, timeout=60).json()
        r = httpx.post(url, json={**body, "stream": True}, timeout=60)
        streamed = {0: "", 1: ""}
        for event in _events(r):
            for c in event["choices"]:
                streamed[c["index"]] += c["delta"].get("content") or ""
        assert streamed == {c["index"]: c["message"]["content"] for c in whole["choices"]}
        assert all(streamed.values())
    finally:
        live.stop()
        service.close()


def test_a_large_input_is_checked_off_the_event_loop_all_the_same() -> None:
    stage = PolicyStage(Policy.from_settings("default", PolicySettings(redact=["email"], block=["falcon"])))
    text = "lorem ipsum " * 20_000
    out, _ = run_before(stage, chat(f"{text} {EMAIL}"))
    assert out.messages[0].content.endswith(" [REDACTED:email]")
    with pytest.raises(RefusedError):
        run_before(stage, chat(f"{text} falcon"))

"""Credentials reach the upstream and nowhere else: not exception text, bodies, tracebacks, reprs or logs."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from llmhost.errors import ConfigError
from llmhost.providers.anthropic import AnthropicProvider
from llmhost.providers.base import ProviderError, ProviderHTTPError
from llmhost.providers.http import Timeouts, resolve_secret
from llmhost.providers.openai_compat import OpenAICompatProvider
from tests.providers.conftest import MakeProvider, chat, user
from tests.providers.fault_server import Fault, FaultServer, closed_port

pytestmark = pytest.mark.anyio

KEY = "sk-live-SECRET-credential-4f9a2c"
REQUEST = chat("m", user("hi"))
TIMEOUTS = Timeouts(connect=1, first_token=0.3, total=0.5)


def leaks(error: BaseException) -> list[str]:
    """Every rendering of an error someone might log or store."""
    body = getattr(error, "body", None)
    return [
        str(error),
        repr(error),
        "".join(traceback.format_exception(error)),  # the whole chain, causes included
        json.dumps(body) if body is not None else "",
    ]


async def stream(p: Any) -> None:
    async for _ in p.stream(REQUEST):
        pass


Scenario = tuple[Fault | None, Callable[[Any], Awaitable[Any]]]
SCENARIOS: dict[str, Scenario] = {
    "401 echoing the key": (
        Fault(
            status=401, error={"error": {"message": f"Incorrect API key provided: {KEY}.", "type": "auth"}}
        ),
        lambda p: p.answer(REQUEST),
    ),
    "500 with the key in a plain-text body": (
        Fault(status=500, raw_error=f"boom: bad credential {KEY}".encode()),
        lambda p: p.answer(REQUEST),
    ),
    "429 streaming, key in the message": (
        Fault(status=429, error={"error": {"message": f"key {KEY} is rate limited"}}),
        stream,
    ),
    "stall": (Fault(stall_before_headers=5), lambda p: p.answer(REQUEST)),
    "cut stream": (Fault(chunks=4, cut_after=2), stream),
    "refused": (None, lambda p: p.answer(REQUEST)),
}


@pytest.fixture(params=["openai", "anthropic"])
def keyed(
    request: pytest.FixtureRequest, faults: FaultServer, make_provider: MakeProvider
) -> Callable[[str], OpenAICompatProvider | AnthropicProvider]:
    def make(base_url: str) -> OpenAICompatProvider | AnthropicProvider:
        if request.param == "openai":
            return make_provider(OpenAICompatProvider, "remote", base_url, api_key=KEY, timeouts=TIMEOUTS)
        return make_provider(AnthropicProvider, "claude", base_url, api_key=KEY, timeouts=TIMEOUTS)

    return make


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_the_key_never_appears_in_errors_or_logs(
    scenario: str,
    faults: FaultServer,
    keyed: Callable[[str], OpenAICompatProvider | AnthropicProvider],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    fault, call = SCENARIOS[scenario]
    if fault is not None:
        faults.fault = fault
    base_url = faults.base_url if fault is not None else f"http://127.0.0.1:{closed_port()}"
    p = keyed(base_url)
    with pytest.raises(ProviderError) as info:
        await call(p)
    if fault is not None:  # the key did travel, so its absence below means something
        assert KEY in " ".join(faults.requests[-1].headers.values())
    for text in [*leaks(info.value), repr(p), caplog.text]:
        assert KEY not in text
    for record in caplog.records:
        assert KEY not in record.getMessage()


async def test_a_key_echoed_in_an_error_body_is_redacted_but_the_message_kept(
    faults: FaultServer, keyed: Callable[[str], OpenAICompatProvider | AnthropicProvider]
) -> None:
    faults.fault = SCENARIOS["401 echoing the key"][0] or Fault()
    with pytest.raises(ProviderHTTPError) as info:
        await keyed(faults.base_url).answer(REQUEST)
    assert info.value.body is not None
    assert "Incorrect API key provided: ***." in str(info.value)
    assert info.value.body["error"]["message"] == "Incorrect API key provided: ***."


def test_reprs_show_name_and_url_only() -> None:
    p = OpenAICompatProvider(
        "remote", "http://127.0.0.1:1/v1", api_key=KEY, extra_headers={"x-api-key": "h-key"}
    )
    assert repr(p) == "OpenAICompatProvider(name='remote', base_url='http://127.0.0.1:1/v1')"
    assert KEY not in repr(p._http) and "h-key" not in repr(p._http)
    claude = AnthropicProvider("claude", "http://127.0.0.1:1", api_key=KEY)
    assert KEY not in repr(claude) and KEY not in repr(vars(claude))


def test_resolve_secret_reads_a_literal_an_env_var_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert resolve_secret(KEY, None, None) == KEY
    monkeypatch.setenv("MY_PROVIDER_KEY", f"  {KEY}\n")
    assert resolve_secret(None, "MY_PROVIDER_KEY", None) == KEY
    secret_file = tmp_path / "key"
    secret_file.write_text(f"{KEY}\n")
    assert resolve_secret(None, None, secret_file) == KEY
    assert resolve_secret(None, None, None) is None


def test_resolve_secret_refuses_missing_empty_or_ambiguous_sources(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        resolve_secret(None, "NO_SUCH_KEY_VAR", None)
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_secret(None, None, tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        resolve_secret(None, None, tmp_path / "empty")
    monkeypatch.setenv("SOME_KEY", KEY)
    with pytest.raises(ConfigError, match="only one") as info:
        resolve_secret(KEY, "SOME_KEY", None)
    assert KEY not in str(info.value)

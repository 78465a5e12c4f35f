"""The one pipeline: a rule set once as a stage holds for every door, the CLI included; every request's
usage row says which door it came through and who asked."""

from __future__ import annotations

import httpx
import openai
import pytest
from typer.testing import CliRunner

from llmhost.cli import common as cli_common
from llmhost.cli import main as cli
from llmhost.config import Settings
from llmhost.core.stage import Request, StageBase
from llmhost.core.types import RequestContext
from llmhost.errors import RefusedError
from llmhost.service import Service
from tests.conftest import TINY, make_service, start_server


class RefuseWord(StageBase):
    """Refuses any request whose text contains a forbidden word."""

    name = "refuse-word"

    def __init__(self, word: str) -> None:
        self.word = word
        self.seen: list[str] = []

    async def before(self, ctx: RequestContext, request: Request) -> Request:
        self.seen.append(ctx.door)
        text = " ".join(m.content for m in getattr(request, "messages", ())) + str(
            getattr(request, "prompt", "")
        )
        if self.word in text:
            raise RefusedError(f"the word {self.word!r} is not allowed here")
        return request


def test_stage_names_read_in_order(service: Service) -> None:
    assert service.pipeline.stage_names == (
        "audit",
        "auth",
        "agents",
        "validate",
        "route",
        "limits",
        "budget",
        "generate",
        "usage",
    )


def test_a_refusing_stage_applies_to_the_openai_door(settings: Settings, tiny_model_path: object) -> None:
    stage = RefuseWord("forbidden")
    svc = Service(settings, extra_stages=(stage,))
    svc.store.import_file(tiny_model_path, TINY)  # type: ignore[arg-type]
    live = start_server(settings, svc)
    try:
        client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.PermissionDeniedError, match="not allowed"):
            client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "forbidden"}])
        with pytest.raises(openai.PermissionDeniedError):
            client.completions.create(model=TINY, prompt="a forbidden prompt", max_tokens=2)
        ok = client.completions.create(model=TINY, prompt="fine", max_tokens=2)
        assert ok.choices[0].finish_reason in {"stop", "length"}
        r = httpx.post(
            f"{live.base_url}/v1/chat/completions",
            json={"model": TINY, "messages": [{"role": "user", "content": "forbidden"}], "stream": True},
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "refused"
    finally:
        live.stop()
        svc.close()
    assert set(stage.seen) == {"openai"}


def test_a_refusing_stage_applies_to_the_cli(
    settings: Settings, tiny_model_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = RefuseWord("forbidden")

    def service_with_stage(s: Settings) -> Service:
        svc = Service(s, extra_stages=(stage,))
        if svc.registry.find(TINY) is None:
            svc.store.import_file(tiny_model_path, TINY)  # type: ignore[arg-type]
        return svc

    monkeypatch.setattr(cli_common, "new_service", service_with_stage)
    monkeypatch.setenv("LLMHOST_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    refused = runner.invoke(cli.app, ["run", TINY, "forbidden words", "--max-tokens", "2"])
    assert refused.exit_code == 1 and "not allowed" in refused.output
    fine = runner.invoke(cli.app, ["run", TINY, "hello", "--max-tokens", "2"])
    assert fine.exit_code == 0, fine.output
    assert stage.seen == ["cli", "cli"]


def test_usage_rows_record_the_door_and_the_principal(server: object, service: Service) -> None:
    base = server.base_url  # type: ignore[attr-defined]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
    client.completions.create(model=TINY, prompt="hi", max_tokens=2)
    service.usage.flush()
    [row] = service.usage.summary("door")
    assert row["door"] == "openai" and row["requests"] == 1


def test_cli_run_goes_through_routes_and_writes_usage(settings: Settings, tiny_model_path: object) -> None:
    svc = make_service(settings, tiny_model_path)  # type: ignore[arg-type]
    svc.close()
    env = {"LLMHOST_DATA_DIR": str(settings.data_dir), "LLMHOST_ENGINE__N_CTX": "512"}
    result = CliRunner().invoke(cli.app, ["run", TINY, "hello", "--max-tokens", "3"], env=env)
    assert result.exit_code == 0, result.output
    check = Service(settings)
    try:
        [row] = check.usage.summary("door")
        assert row["door"] == "cli" and row["completion_tokens"] <= 3
    finally:
        check.close()

"""The MCP server at ``/mcp`` driven by the official SDK client over Streamable HTTP: tool listing with
schemas, each built-in tool's happy and error path, resources, prompts, both protocol revisions, and
every call in the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client

from llmhost.service import Service
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.doors.mcp.helpers import call, run, structured, text_of

EXPECTED_TOOLS = {
    "chat",
    "complete",
    "embed",
    "list_models",
    "get_model_info",
    "pull_model",
    "load_model",
    "unload_model",
    "switch_model",
    "get_system_status",
    "get_vram_status",
    "get_provider_health",
    "get_usage",
    "get_audit_logs",
    "verify_audit_log",
    "run_security_audit",
    "validate_config",
}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path
) -> Iterator[tuple[LiveServer, Service]]:
    settings = make_settings(tmp_path_factory.mktemp("mcp") / "data")
    service = make_service(settings, tiny_model_path)
    live = start_server(settings, service)
    yield live, service
    live.stop()
    service.close()


@pytest.fixture(scope="module")
def url(served: tuple[LiveServer, Service]) -> str:
    return f"{served[0].base_url}/mcp"


def test_every_tool_is_listed_with_an_input_and_an_output_schema(url: str) -> None:
    async def body(client: Client) -> list[object]:
        return list((await client.list_tools()).tools)

    tools = {t.name: t for t in run(body, url)}  # type: ignore[attr-defined]
    assert set(tools) == EXPECTED_TOOLS
    for tool in tools.values():
        assert tool.input_schema["type"] == "object"
        assert tool.output_schema is not None and tool.output_schema["type"] == "object", tool.name
        assert tool.description and tool.annotations is not None and tool.annotations.title
    assert tools["list_models"].annotations.read_only_hint is True
    assert tools["unload_model"].annotations.read_only_hint is False
    assert tools["chat"].input_schema["required"] == ["messages"]


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
def test_both_protocol_revisions_are_spoken(url: str, mode: str) -> None:
    async def body(client: Client) -> tuple[str, object]:
        result = await client.call_tool("list_models", {})
        return client.protocol_version, result.structured_content

    version, content = run(body, url, mode=mode)
    assert version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
    assert isinstance(content, dict) and [m["name"] for m in content["models"]] == [TINY]


def test_list_models_and_get_model_info_describe_the_local_model(url: str) -> None:
    listed = structured(call(url, "list_models"))
    assert listed["default_model"] == TINY
    info = structured(call(url, "get_model_info", {"model": TINY}))
    assert info["name"] == TINY and info["kind"] == "local" and info["architecture"] == "llama"
    assert info["digest"].startswith("sha256:") and info["size_bytes"] > 0


def test_an_unknown_model_is_a_tool_error_with_a_message_not_a_traceback(url: str) -> None:
    result = call(url, "get_model_info", {"model": "no-such-model"})
    assert result.is_error
    message = text_of(result)
    assert "no-such-model" in message and "not found" in message
    assert "Traceback" not in message and "File " not in message


def test_arguments_outside_the_schema_are_a_tool_error(url: str) -> None:
    result = call(url, "chat", {"messages": []})
    assert result.is_error and "messages" in text_of(result)
    result = call(url, "get_usage", {"by": "colour"})
    assert result.is_error and "by" in text_of(result)


def test_chat_and_complete_answer_through_the_pipeline(url: str, served: tuple[LiveServer, Service]) -> None:
    answer = structured(
        call(url, "chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "seed": 1})
    )
    assert answer["model"] == TINY and answer["served_by"] == f"local/{TINY}"
    assert answer["usage"]["completion_tokens"] == 4 and answer["finish_reason"] == "length"
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + 4
    unknown = call(url, "chat", {"messages": [{"role": "user", "content": "hi"}], "model": "missing"})
    assert unknown.is_error and "missing" in text_of(unknown)
    assert call(url, "complete", {"prompt": "x", "max_tokens": 0}).is_error  # below the schema's minimum
    done = structured(
        call(url, "complete", {"prompt": "Once upon", "max_tokens": 3, "temperature": 0})
    )  # no model given: the default
    assert done["model"] == TINY and done["usage"]["completion_tokens"] == 3
    service = served[1]
    service.usage.flush()
    doors = {row["door"] for row in service.usage.summary("door")}
    assert "mcp" in doors  # usage rows name the door the calls came through


def test_embed_gives_one_vector_per_input(url: str) -> None:
    out = structured(call(url, "embed", {"inputs": ["a", "bb", "ccc"]}))
    assert len(out["vectors"]) == 3 and out["dimensions"] == len(out["vectors"][0]) > 0
    assert call(url, "embed", {"inputs": []}).is_error
    assert "missing" in text_of(call(url, "embed", {"inputs": ["a"], "model": "missing"}))


def test_load_and_unload_change_what_is_resident(url: str) -> None:
    unloaded = structured(call(url, "unload_model", {"model": TINY, "force": True}))
    assert unloaded["status"] == "unloaded"
    assert structured(call(url, "get_model_info", {"model": TINY}))["loaded"] is None
    loaded = structured(call(url, "load_model", {"model": TINY}))
    assert loaded["status"] == "loaded" and loaded["loaded"]["slots"] == 4
    assert structured(call(url, "get_model_info", {"model": TINY}))["loaded"] is not None
    assert call(url, "load_model", {"model": "missing"}).is_error
    assert "'missing' not found" in text_of(call(url, "unload_model", {"model": "missing"}))


def test_switch_model_points_an_alias_at_another_model(url: str) -> None:
    switched = structured(call(url, "switch_model", {"alias": "prod", "model": TINY}))
    assert switched["alias"] == "prod" and switched["previous"] is None
    info = structured(call(url, "get_model_info", {"model": "prod"}))
    assert info["digest"] == switched["digest"]
    again = structured(call(url, "switch_model", {"alias": "prod", "model": TINY}))
    assert again["previous"] == switched["digest"]
    assert call(url, "switch_model", {"alias": "prod", "model": "missing"}).is_error


def test_monitoring_tools_report_this_machine_and_server(url: str) -> None:
    status = structured(call(url, "get_system_status"))
    assert status["logical_cpus"] >= 1 and status["ram_total_bytes"] > 0
    assert [m["name"] for m in status["models"]] == [TINY] or TINY in [m["name"] for m in status["models"]]
    assert status["gpus"] == [] and status["gpu_note"]  # this machine has no GPU: the reason is given
    vram = structured(call(url, "get_vram_status"))
    assert vram["gpus"] == [] and vram["models_on_gpu"] == []
    health = structured(call(url, "get_provider_health"))
    assert {"name": "local", "type": "local"} in health["providers"]
    call(url, "complete", {"prompt": "x", "max_tokens": 1})
    assert call(url, "get_usage", {"days": -1}).is_error
    usage = structured(call(url, "get_usage", {"by": "door"}))
    assert any(row["group"] == "mcp" and row["requests"] >= 1 for row in usage["rows"])


def test_audit_tools_read_and_verify_the_chain_with_each_mcp_call_in_it(url: str) -> None:
    call(url, "list_models")
    call(url, "chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    call(url, "get_model_info", {"model": "no-such-model"})
    call(url, "chat", {"messages": [{"role": "user", "content": "hi"}], "model": "no-such-model"})
    page = structured(call(url, "get_audit_logs", {"limit": 1000}))
    kinds = {(e["door"], e["kind"]) for e in page["entries"]}
    assert ("mcp", "list_models") in kinds and ("mcp", "chat") in kinds
    failed = [e for e in page["entries"] if e["kind"] == "get_model_info" and e["status"] == 404]
    assert failed, "a failed tool call is audited with its status"
    assert call(url, "get_audit_logs", {"limit": 0}).is_error
    verdict = structured(call(url, "verify_audit_log"))
    assert verdict["breaks"] == []
    assert (
        verdict["intact"] is True and verdict["records"] >= len(page["entries"]) and verdict["breaks"] == []
    )


def test_run_security_audit_checks_the_live_configuration(url: str) -> None:
    report = structured(call(url, "run_security_audit"))
    checks = {f["check"]: f for f in report["findings"]}
    assert checks["template_sandbox"]["severity"] == "ok"
    assert checks["bind"]["severity"] == "info" and "no API key" in checks["bind"]["message"]
    assert checks["tls"]["severity"] == "ok" and report["critical"] == 0


def test_validate_config_names_every_problem_with_its_path(url: str, tmp_path: Path) -> None:
    verdict = structured(call(url, "validate_config", {"text": 'port = "x"\n[engine]\nn_parallel = 0\n'}))
    assert verdict["valid"] is False
    assert {p["path"] for p in verdict["problems"]} == {"port", "engine.n_parallel"}
    assert structured(call(url, "validate_config", {"text": "port = 8081\n"})) == {
        "valid": True,
        "problems": [],
    }
    broken = structured(call(url, "validate_config", {"text": "port = \n"}))
    assert broken["problems"][0]["path"] == "(toml)"
    config = tmp_path / "llmhost.toml"
    config.write_text("[memory]\nbogus = 1\n")
    from_file = structured(call(url, "validate_config", {"path": str(config)}))
    assert from_file["problems"][0]["path"] == "memory.bogus"
    assert call(url, "validate_config", {}).is_error
    assert "no such file" in text_of(call(url, "validate_config", {"path": str(tmp_path / "none.toml")}))


def test_a_model_card_is_a_resource_and_prompts_are_listed(url: str) -> None:
    async def body(client: Client) -> tuple[str, list[str], list[str], str]:
        templates = await client.list_resource_templates()
        card = await client.read_resource(f"llmhost://models/{TINY}")
        prompts = await client.list_prompts()
        got = await client.get_prompt("summarize", {"text": "long text", "words": "10"})
        text = got.messages[0].content.text  # type: ignore[union-attr]
        return (
            card.contents[0].text,  # type: ignore[union-attr]
            [t.uri_template for t in templates.resource_templates],
            [p.name for p in prompts.prompts],
            text,
        )

    card, templates, prompts, prompt = run(body, url)
    assert '"name": "tiny"' in card and "llmhost://models/{name}" in templates
    assert {"summarize", "explain_code", "compare_models"} <= set(prompts)
    assert "10 words" in prompt and "long text" in prompt


@pytest.mark.parametrize(("mode", "code"), [("legacy", -32002), ("auto", -32602)])
def test_an_unknown_model_card_is_the_revisions_resource_not_found(url: str, mode: str, code: int) -> None:
    # 2025-11-25 says "Resource not found: -32002"; 2026-07-28 moved it to -32602.
    from mcp.shared.exceptions import MCPError

    async def body(client: Client) -> tuple[str, int]:
        with pytest.raises(MCPError) as err:
            await client.read_resource("llmhost://models/missing")
        return str(err.value), err.value.error.code

    message, got = run(body, url, mode=mode)
    assert "'missing' not found" in message and got == code

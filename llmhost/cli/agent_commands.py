"""``llmhost agents list | show | create | rm | runs | scorecard``: agents, their runs and scorecards.

``create`` checks the agent against this machine's models, policies, datasets and tool groups (as
``POST /v1/agents`` does) and writes it to ``<data_dir>/agents.db``; a running server sees it on its next
request. ``runs`` and ``scorecard`` read ``<data_dir>/runs.db`` (no server needed).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from llmhost.apps.agents import AgentSpec, AgentStore, RunRecord, scorecard
from llmhost.cli.common import ConfigOpt, console, errors, settings_for, with_service
from llmhost.cli.common import fail as _fail

__all__ = ["register"]

agents_app = typer.Typer(
    help="Agents: create, list, show, remove; their runs and scorecards.", no_args_is_help=True
)


def _store(config: Path | None) -> AgentStore:
    settings = settings_for(config)
    return AgentStore(
        settings.database_for("agents.db"),
        settings.database_for("runs.db"),
        runs_retention=settings.agents.runs_retention,
    )


def _spec(data: dict[str, Any]) -> AgentSpec:
    try:
        return AgentSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "agent"
        _fail(f"{where}: {first['msg']}")


def _own_tools(service: Any) -> None:
    # Imported here: the MCP server (and the SDK) only for the check of tool_groups.
    from llmhost.doors.mcp.server import own_tools

    service.toolbox.own = own_tools(service)


@agents_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The agent's name (what clients give as the model).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model or route it answers on.")] = None,
    system: Annotated[str, typer.Option("--system", help="Its system prompt.")] = "",
    dataset: Annotated[
        list[str] | None, typer.Option("--dataset", help="A dataset to retrieve from.")
    ] = None,
    tool_group: Annotated[
        list[str] | None, typer.Option("--tool-group", help="llmhost's own MCP tools.")
    ] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="A configured [policies.NAME].")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="The whole definition as JSON.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Create an agent from options, or from a JSON file (the body of POST /v1/agents)."""
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            _fail(f"cannot read {file}: {exc}")
        if not isinstance(data, dict):
            _fail(f"{file} must hold a JSON object")
    data["name"] = name
    given = {"model": model, "policy": policy, "datasets": dataset, "tool_groups": tool_group}
    data.update({k: v for k, v in given.items() if v})
    if system:
        data["system"] = system
    if "model" not in data:
        _fail('an agent needs a model: --model NAME (or "model" in --file)')
    spec = _spec(data)

    def save(service: Any) -> None:
        _own_tools(service)
        service.agents.create(spec)

    with_service(settings_for(config), save)
    console.print(f"created agent {spec.name} on {spec.model}", highlight=False, markup=False)


@agents_app.command("list")
def list_agents(config: ConfigOpt = None) -> None:
    """The agents, with their models, datasets and tools."""
    store = _store(config)
    try:
        records = store.all()
    finally:
        store.close()
    table = Table("NAME", "MODEL", "DATASETS", "TOOLS", "UPDATED")
    for r in records:
        s = r.spec
        tools = [t.function.name for t in s.tools] + [f"{g}/*" for g in s.tool_groups]
        tools += [f"{m.name}:*" for m in s.mcp_servers]
        updated = dt.datetime.fromtimestamp(r.updated).strftime("%Y-%m-%d %H:%M")
        table.add_row(
            escape(s.name), escape(s.model), escape(", ".join(s.datasets)), escape(", ".join(tools)), updated
        )
    console.print(table)


@agents_app.command("show")
def show(name: str, config: ConfigOpt = None) -> None:
    """An agent's whole definition, as JSON."""
    store = _store(config)
    try:
        with errors():
            record = store.get(name)
    finally:
        store.close()
    print(json.dumps(record.as_dict(), indent=2))


@agents_app.command("rm")
def remove(name: str, config: ConfigOpt = None) -> None:
    """Remove an agent (its runs stay, for the scorecards)."""
    store = _store(config)
    try:
        with errors():
            store.delete(name)
    finally:
        store.close()
    console.print(f"removed agent {name}", highlight=False, markup=False)


@agents_app.command("runs")
def runs(
    name: str,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON lines.")] = False,
    config: ConfigOpt = None,
) -> None:
    """An agent's latest runs: status, latency, tokens, tool calls, retrieved chunks."""
    store = _store(config)
    try:
        with errors():
            store.get(name)
        found = store.runs(agent=name, limit=limit)
    finally:
        store.close()
    if as_json:
        for r in found:
            print(json.dumps({k: getattr(r, k) for k in RunRecord.__slots__}, ensure_ascii=False))
        return
    table = Table("RUN", "WHEN", "DOOR", "STATUS", "MS", "TOKENS", "TOOLS", "CHUNKS")
    for r in found:
        when = dt.datetime.fromtimestamp(r.created).strftime("%m-%d %H:%M:%S")
        tokens = f"{r.prompt_tokens}+{r.completion_tokens}"
        tools = ", ".join(c["name"] for c in r.tool_calls)
        table.add_row(
            r.id, when, r.door, r.status, f"{r.latency_ms:.0f}", tokens, escape(tools), str(len(r.retrieved))
        )
    console.print(table)


@agents_app.command("scorecard")
def show_scorecard(
    name: Annotated[str | None, typer.Argument(help="The agent (or --model).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="A model's scorecard instead.")] = None,
    days: Annotated[float, typer.Option("--days", min=0.001, max=3650, help="The window.")] = 7.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Success and error rates, latency p50/p95, tokens, cost, policy compliance, tool calls, retrieval
    and feedback over the last ``--days``."""
    if (name is None) == (model is None):
        _fail("give an agent's name or --model NAME")
    store = _store(config)
    try:
        if name is not None:
            with errors():
                store.get(name)
        card = scorecard(store, agent=name, model=model, days=days)
    finally:
        store.close()
    if as_json:
        print(json.dumps(card, indent=2))
        return
    console.print(_format(card), highlight=False, markup=False)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _format(card: dict[str, Any]) -> str:
    who = card["subject"].get("agent") or card["subject"].get("model")
    lat, tok, tools, ret, fb = (
        card["latency_ms"],
        card["tokens"],
        card["tool_calls"],
        card["retrieval"],
        card["feedback"],
    )
    ms = "-" if lat["p50"] is None else f"{lat['p50']:.0f} ms p50, {lat['p95']:.0f} ms p95"
    mean = "-" if fb["mean_rating"] is None else f"{fb['mean_rating']:.2f}"
    return "\n".join(
        [
            f"{who}: last {card['window_days']:g} days, {card['requests']} requests",
            f"  success {_pct(card['success_rate'])}, errors {_pct(card['error_rate'])}",
            f"  latency {ms}",
            f"  tokens {tok['prompt']} in, {tok['completion']} out; cost ${card['cost']:.6f}",
            f"  policy compliance {_pct(card['policy_compliance'])}",
            f"  tool calls {tools['total']} ({_pct(tools['success_rate'])} succeeded)",
            f"  retrieval in {ret['runs_with_retrieval']} runs ({_pct(ret['rate'])})",
            f"  feedback {fb['up']} up, {fb['down']} down, {fb['ratings']} ratings (mean {mean})",
        ]
    )


def register(app: typer.Typer) -> None:
    app.add_typer(agents_app, name="agents")

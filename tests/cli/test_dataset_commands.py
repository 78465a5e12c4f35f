"""``llmhost datasets create | add | list | docs | search | rm`` through typer's test runner, on a data
dir of its own (the embedded all-MiniLM embeds the documents through the CLI's pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from llmhost.cli.dataset_commands import register
from tests.cli.helpers import one_error_line


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    register(cli)
    return cli


def _run(app: typer.Typer, data_dir: Path, *args: str) -> Result:
    env = {"LLMHOST_DATA_DIR": str(data_dir), "LLMHOST_DEFAULT_MODEL": ""}
    return CliRunner().invoke(app, ["datasets", *args], env=env, catch_exceptions=False)


def test_create_add_search_remove(app: typer.Typer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert "created dataset manuals" in _run(app, data, "create", "manuals").stdout
    router = tmp_path / "router.md"
    router.write_text("Hold the reset button for ten seconds to reset the router.")
    bread = tmp_path / "bread.txt"
    bread.write_text("Sourdough rises with wild yeast.")
    added = _run(app, data, "add", "manuals", str(router), str(bread))
    assert added.exit_code == 0, added.stderr
    assert "added router.md: 1 chunks" in added.stderr
    assert "manuals" in _run(app, data, "list").stdout
    assert "router.md" in _run(app, data, "docs", "manuals").stdout
    hits = [
        json.loads(x)
        for x in _run(app, data, "search", "manuals", "reset my router", "--json").stdout.splitlines()
    ]
    assert hits[0]["document"] == "router.md"
    assert "router.md #0" in _run(app, data, "search", "manuals", "router").stdout
    assert _run(app, data, "rm", "manuals", "--document", "bread.txt").exit_code == 0
    assert "bread.txt" not in _run(app, data, "docs", "manuals").stdout
    assert _run(app, data, "rm", "manuals").exit_code == 0
    assert "manuals" not in _run(app, data, "list").stdout


def test_bad_input_is_one_error_line(app: typer.Typer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert "no dataset" in one_error_line(_run(app, data, "search", "ghost", "x"))
    assert "name" in one_error_line(_run(app, data, "create", "bad name"))
    assert _run(app, data, "create", "d").exit_code == 0
    assert "already exists" in one_error_line(_run(app, data, "create", "d"))
    assert "cannot read" in one_error_line(_run(app, data, "add", "d", str(tmp_path / "missing.txt")))
    empty = tmp_path / "empty.txt"
    empty.write_text("  ")
    assert "no text" in one_error_line(_run(app, data, "add", "d", str(empty)))
    assert "--mode" in one_error_line(_run(app, data, "search", "d", "x", "--mode", "magic"), 2)

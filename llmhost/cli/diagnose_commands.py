"""``llmhost diagnose report``: the diagnose engine's quality, from the feedback recorded so far.

Reads ``<data_dir>/diagnose.db`` directly (no server needed): coverage, success rate per category,
calibration (expected calibration error, and a reliability diagram PNG with ``--png``), latency
percentiles, and Cohen's kappa between every two raters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from llmhost.apps.diagnose.report import build_report, format_report, reliability_diagram
from llmhost.apps.diagnose.store import DiagnoseStore
from llmhost.cli.common import ConfigOpt, console
from llmhost.cli.common import fail as _fail
from llmhost.config import load_settings
from llmhost.errors import ConfigError

__all__ = ["register"]

diagnose_app = typer.Typer(help="The diagnose engine: its feedback report.", no_args_is_help=True)


@diagnose_app.command("report")
def report(
    png: Annotated[Path | None, typer.Option("--png", help="Write the reliability diagram here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Coverage, calibration (ECE), success per category, latency percentiles, inter-rater kappa."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc).replace("\n", "; "), 2)
        raise
    path = settings.data_dir / "diagnose.db"
    if not path.exists():
        _fail(f"no diagnoses at {path} (POST /v1/diagnose makes them)")
    store = DiagnoseStore(path)
    try:
        result = build_report(store.outcomes())
    finally:
        store.close()
    if png is not None:
        try:
            reliability_diagram(result, png)
        except OSError as exc:
            _fail(f"cannot write {png}: {exc}")
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        console.print(format_report(result), highlight=False, markup=False, soft_wrap=True)
        if png is not None:
            console.print(f"reliability diagram: {png}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(diagnose_app, name="diagnose")

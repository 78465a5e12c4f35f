"""``llmhost audit verify | tail``: check the hash chain, read the newest records.

``verify`` exits 0 when the chain holds and 1 naming each row that does not; it prints the head
(``SEQ:HASH``) to keep elsewhere, which a later ``verify --head SEQ:HASH`` checks is still there.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from llmhost.cli.common import ConfigOpt, err_console
from llmhost.cli.common import fail as _fail
from llmhost.config import load_settings
from llmhost.errors import ConfigError
from llmhost.security.audit import AuditLog, AuditRecord
from llmhost.storage import DB_ERRORS

__all__ = ["register"]

audit_app = typer.Typer(help="The audit log: verify its hash chain, tail its records.", no_args_is_help=True)


def _log(config: Path | None) -> AuditLog:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc).replace("\n", "; "), 2)
        raise
    if settings.database_url is None and not settings.audit_path.exists():
        _fail(f"no audit log at {settings.audit_path} (it is made by the first request a server answers)")
    try:
        return AuditLog(settings.database_for("audit.db"))
    except DB_ERRORS as exc:
        _fail(f"cannot open the audit log: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        raise


def _line(r: AuditRecord) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.ts))
    who = r.principal + (f" ({r.key_id})" if r.key_id else "")
    tokens = f"{r.prompt_tokens}+{r.completion_tokens} tok"
    where = f"{r.route} -> {r.target or '-'}"
    return f"{r.seq:>6} {when} {r.status} {r.door:<9} {who:<24} {where} {tokens} {r.latency_ms:.0f} ms"


@audit_app.command("verify")
def verify(
    head: Annotated[str | None, typer.Option(help="A head kept from an earlier verify: SEQ:HASH.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Walk the hash chain; name every edited, deleted or reordered row."""
    kept: tuple[int, str] | None = None
    if head is not None:
        seq, _, digest = head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            _fail("--head takes SEQ:HASH as verify printed it")
        kept = (int(seq), digest)
    log = _log(config)
    try:
        count, last, breaks = log.verify(kept)
    finally:
        log.close()
    for b in breaks:
        err_console.print(f"row {b.seq}: {escape(b.reason)}", highlight=False, soft_wrap=True)
    if breaks:
        _fail(f"the audit chain is broken ({len(breaks)} problem(s) in {count} rows)")
    print(f"ok: {count} rows, chain intact; head {count}:{last}" if count else "ok: the audit log is empty")


@audit_app.command("tail")
def tail(
    n: Annotated[int, typer.Option("-n", help="How many of the newest records.")] = 20,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Print the newest records."""
    if n < 0:
        _fail("-n must be 0 or more")
    log = _log(config)
    try:
        rows = log.rows(limit=n, newest=True) if n else []
        last = rows[-1].seq if rows else _last_seq(log)
        while True:
            for r in rows:
                print(json.dumps(asdict(r)) if as_json else _line(r), flush=True)
            if not follow:
                return
            time.sleep(0.5)
            rows = log.rows(after=last, limit=1000)
            last = rows[-1].seq if rows else last
    except KeyboardInterrupt:
        return
    finally:
        log.close()


def _last_seq(log: AuditLog) -> int:
    newest = log.rows(limit=1, newest=True)
    return newest[-1].seq if newest else 0


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")

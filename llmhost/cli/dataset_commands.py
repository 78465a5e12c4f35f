"""``llmhost datasets create | list | add | docs | search | rm``: document collections for retrieval.

The commands open the store (``<data_dir>/datasets.db``, or PostgreSQL with ``database_url``) through a
service of their own, so documents are embedded through the same pipeline as over HTTP (door ``cli``);
a running server sees the changes at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from llmhost.apps.datasets import FORMATS
from llmhost.cli.common import ConfigOpt, console, err_console, errors, new_service, settings_for
from llmhost.cli.common import fail as _fail
from llmhost.core.types import RequestContext
from llmhost.security.auth import OWNER

__all__ = ["register"]

T = TypeVar("T")
datasets_app = typer.Typer(help="Datasets: document collections agents answer from.", no_args_is_help=True)


def _run(config: Path | None, body: Callable[[Any], Awaitable[T]]) -> T:
    settings = settings_for(config)

    async def main() -> T:
        service = new_service(settings)
        try:
            await service.startup(preload=False)
            return await body(service)
        finally:
            await asyncio.to_thread(service.close)

    with errors():
        return asyncio.run(main())
    raise AssertionError("unreachable")


def _ctx() -> RequestContext:
    return RequestContext(principal=OWNER, door="cli")


@datasets_app.command("create")
def create(
    name: str,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Embedding model (default [embeddings] model).")
    ] = None,
    chunk_tokens: Annotated[
        int | None, typer.Option("--chunk-tokens", help="Tokens per chunk (256).")
    ] = None,
    chunk_overlap: Annotated[
        int | None, typer.Option("--chunk-overlap", help="Overlap in tokens (32).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Make an empty dataset."""
    info = _run(
        config,
        lambda s: s.datasets.create(
            name,
            description=description,
            embedding_model=model,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
        ),
    )
    console.print(
        f"created dataset {info.name} ({info.embedding_model}, {info.chunk_tokens} tokens a chunk)",
        highlight=False,
        markup=False,
    )


@datasets_app.command("list")
def list_datasets(config: ConfigOpt = None) -> None:
    """The datasets, with their documents and chunks."""
    infos = _run(config, lambda s: s.datasets.all())
    table = Table("NAME", "DOCUMENTS", "CHUNKS", "EMBEDDING MODEL", "CREATED")
    for i in infos:
        when = dt.datetime.fromtimestamp(i.created).strftime("%Y-%m-%d %H:%M")
        table.add_row(escape(i.name), str(i.documents), str(i.chunks), escape(i.embedding_model), when)
    console.print(table)


@datasets_app.command("add")
def add(
    name: str,
    files: Annotated[list[Path], typer.Argument(help="Files to add (txt, md, html, pdf, jsonl, csv).")],
    fmt: Annotated[
        str | None, typer.Option("--format", help=f"One of {', '.join(FORMATS)} (default: by extension).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Add (or replace, by file name) documents; each is chunked and embedded."""
    blobs: list[tuple[str, bytes]] = []
    for path in files:
        try:
            blobs.append((path.name, path.read_bytes()))
        except OSError as exc:
            _fail(f"cannot read {path}: {exc.strerror or exc}")

    async def body(service: Any) -> None:
        for doc_name, data in blobs:
            doc = await service.datasets.add_document(_ctx(), name, doc_name, data, fmt=fmt)
            err_console.print(
                f"added {doc.name}: {doc.chunks} chunks ({doc.format}, {doc.bytes} bytes)",
                highlight=False,
                markup=False,
            )

    _run(config, body)


@datasets_app.command("docs")
def docs(name: str, config: ConfigOpt = None) -> None:
    """A dataset's documents."""
    found = _run(config, lambda s: s.datasets.documents(name))
    table = Table("ID", "NAME", "FORMAT", "BYTES", "CHUNKS")
    for d in found:
        table.add_row(f"doc_{d.id}", escape(d.name), d.format, str(d.bytes), str(d.chunks))
    console.print(table)


@datasets_app.command("search")
def search(
    name: str,
    query: str,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many chunks.")] = 5,
    mode: Annotated[str, typer.Option("--mode", help="hybrid, vector or text.")] = "hybrid",
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON lines.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Hybrid search (vectors + BM25, fused) with citations."""
    if mode not in ("hybrid", "vector", "text"):
        _fail("--mode must be hybrid, vector or text", 2)
    hits = _run(config, lambda s: s.datasets.search(_ctx(), [name], query, k, mode))
    for h in hits:
        if as_json:
            print(json.dumps(h.as_dict(), ensure_ascii=False))
            continue
        text = " ".join(h.text.split())
        console.print(
            f"{h.score:.4f}  {h.document} #{h.chunk} [{h.start}:{h.end}]  {text[:200]}",
            highlight=False,
            markup=False,
        )


@datasets_app.command("rm")
def remove(
    name: str,
    document: Annotated[
        str | None, typer.Option("--document", help="Remove only this document (name or id).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Remove a dataset (or one of its documents)."""
    if document is not None:
        _run(config, lambda s: s.datasets.delete_document(name, document))
        console.print(f"removed {document} from {name}", highlight=False, markup=False)
        return
    _run(config, lambda s: s.datasets.delete(name))
    console.print(f"removed dataset {name}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")

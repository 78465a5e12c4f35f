"""The audit log for the dashboard (scope ``audit``): ``GET /api/audit/verify`` walks the hash chain, what
``llmhost audit verify`` does (``?head=SEQ:HASH`` also checks that rows were not cut off the end since
that head was kept); ``GET /api/audit/recent`` gives the newest records, what ``llmhost audit tail``
shows (``GET /api/audit`` pages forward from a row number, oldest first)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from llmhost.doors.common import door_route
from llmhost.doors.openai.translate import render_error
from llmhost.errors import RequestError
from llmhost.service import Service

__all__ = ["router"]

router = APIRouter(prefix="/api", route_class=door_route(render_error))


@router.get("/audit/verify")
async def verify(request: Request, head: str | None = None) -> dict[str, Any]:
    """``{"ok", "rows", "head": "SEQ:HASH", "breaks": [{"seq", "reason"}]}``."""
    kept = _parse_head(head) if head else None
    service: Service = request.app.state.service
    rows, last_hash, breaks = await asyncio.to_thread(service.audit.verify, kept)
    return {
        "object": "audit.verification",
        "ok": not breaks,
        "rows": rows,
        "head": f"{rows}:{last_hash}" if rows else None,
        "breaks": [{"seq": b.seq, "reason": b.reason} for b in breaks],
    }


def _parse_head(text: str) -> tuple[int, str]:
    seq, sep, digest = text.partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        raise RequestError("head must read SEQ:HASH, as verify printed it", "head")
    return int(seq), digest


@router.get("/audit/recent")
async def recent(request: Request, limit: int = 100, key: str | None = None) -> dict[str, Any]:
    """The newest ``limit`` records (1 to 1000), oldest of them first; ``key``: only one key's."""
    if not 1 <= limit <= 1000:
        raise RequestError("limit must be between 1 and 1000", "limit")
    service: Service = request.app.state.service
    rows = await asyncio.to_thread(service.audit.rows, limit=limit, newest=True, key_id=key)
    return {"object": "list", "data": [asdict(r) for r in rows]}

"""What the loopback wire servers share: the echo answer, tool planning, logprobs, request recording.

The behaviour they have in common is described in ``wire_servers``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from starlette.applications import Starlette
from starlette.requests import Request

if TYPE_CHECKING:
    from tests.conftest import LiveServer

__all__ = [
    "LOGPROB",
    "RIVAL",
    "RIVAL_LOGPROB",
    "EchoAnswer",
    "echo_answer",
    "embedding",
    "record",
    "recorded",
    "split_in_three",
    "sse",
    "stops_of",
    "token_logprob",
    "tools_to_call",
    "top_alternatives",
    "words",
]

_PIECE = re.compile(r"\s*\S+")
LOGPROB, RIVAL, RIVAL_LOGPROB = -0.5, " x", -2.0  # every piece's logprob; its one rival


def recorded(live: LiveServer) -> list[dict[str, Any]]:
    """The requests a live wire server has seen, oldest first: ``{"path", "headers", "body"}``."""
    app = cast(Starlette, live.server.config.app)
    return cast(list[dict[str, Any]], app.state.requests)


def words(text: str) -> int:
    return len(text.split())


class EchoAnswer:
    """The deterministic answer to a prompt: its pieces, why it ended, and the stop sequence hit."""

    def __init__(self, prompt: str, max_tokens: int | None, stops: list[str]) -> None:
        text = f"echo: {prompt}"
        self.stop_sequence: str | None = None
        hits = [(text.find(s), s) for s in stops if s and s in text]
        if hits:
            at, self.stop_sequence = min(hits)
            text = text[:at]
        pieces = _PIECE.findall(text)
        self.reason = "stop_sequence" if self.stop_sequence is not None else "end_turn"
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces, self.reason, self.stop_sequence = pieces[:max_tokens], "max_tokens", None
        self.pieces = pieces

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def openai_finish(self) -> str:
        return "length" if self.reason == "max_tokens" else "stop"


def echo_answer(prompt: str, max_tokens: int | None = None, stops: list[str] | None = None) -> EchoAnswer:
    return EchoAnswer(prompt, max_tokens, stops or [])


def tools_to_call(
    offered: list[str], user_text: str, *, forced: str | None, required: bool, parallel: bool
) -> list[str]:
    """The tools an answer calls (see the module doc); empty for a text answer."""
    if forced is not None:
        return [forced]
    named = [name for name in offered if name in user_text] or (offered[:1] if required else [])
    return named if parallel else named[:1]


def split_in_three(text: str) -> Iterator[str]:
    """A streamed tool call's arguments, in the fragments servers send them in."""
    third = max(len(text) // 3, 1)
    yield from (text[i : i + third] for i in range(0, len(text), third))


async def record(request: Request) -> dict[str, Any]:
    raw = await request.body()
    body = json.loads(raw) if raw else {}
    request.app.state.requests.append(
        {"path": request.url.path, "headers": dict(request.headers), "body": body}
    )
    return cast(dict[str, Any], body)


def sse(event: str | None, data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def stops_of(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def top_alternatives(n: int) -> list[tuple[str, float]]:
    return [("", LOGPROB), (RIVAL, RIVAL_LOGPROB)][:n]


def token_logprob(piece: str, top: int) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        **entry(piece, LOGPROB),
        "top_logprobs": [entry(token or piece, lp) for token, lp in top_alternatives(top)],
    }


def embedding(text: str) -> list[float]:
    """A deterministic unit vector for a text."""
    raw = [float(len(text)), float(sum(c in "aeiou" for c in text)), float(text.count(" ")), 1.0]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]

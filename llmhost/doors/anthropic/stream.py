"""The Messages API's streaming events: core :class:`Delta` objects in, Anthropic's SSE events out,
in the order Anthropic sends them (see :class:`MessageStream`). The answers' pieces (usage, stop
reason, tool-use ids, the error envelope) are :mod:`llmhost.doors.anthropic.translate`'s, so a streamed
message and a whole one say the same."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

from llmhost.core.types import Delta, FinishReason, Usage
from llmhost.doors.anthropic.translate import error_body, stop_reason, tool_use_id, usage_body
from llmhost.doors.common import stream_json
from llmhost.errors import LLMHostError, classify

__all__ = ["MessageStream", "error_event"]

log = logging.getLogger(__name__)


def _event(type_: str, payload: dict[str, Any]) -> bytes:
    data = stream_json({"type": type_, **payload}).decode()
    return f"event: {type_}\ndata: {data}\n\n".encode()


_PING = _event("ping", {})


class MessageStream:
    """Deltas -> the Messages API's SSE events, in the order Anthropic sends them:

    ``message_start`` (the message with no content; its usage has the prompt's tokens when the first
    delta carries them, else zeros), ``ping``, then per content block ``content_block_start``,
    ``content_block_delta``...
    (``text_delta`` for text, ``input_json_delta`` with pieces of a tool call's arguments),
    ``content_block_stop``; then ``message_delta`` with ``stop_reason``, ``stop_sequence`` and the
    whole usage (the SDK's accumulator takes its input and output counts over message_start's), and
    ``message_stop``. One block is open at a time: text after a call opens a new text block. A
    failure after the stream began is one ``error`` event, in the same envelope as an error status.
    """

    def __init__(self, id_: str, model: str, *, context_full: bool = False) -> None:
        self.id = id_
        self.model = model
        self.context_full = context_full
        self.blocks = 0  # content blocks started so far
        self._open: int | None = None  # index of the open block
        self._open_is_text = False
        self._calls: dict[int, int] = {}  # core call index -> its block's index
        self._finish: FinishReason | None = None
        self._stop_sequence: str | None = None
        self._usage = Usage()

    def start(self, usage: Usage | None = None) -> list[bytes]:
        """``message_start`` and ``ping``; ``usage``: the prompt's, when known before the answer."""
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_body(replace(usage or Usage(), completion_tokens=0)),
        }
        return [_event("message_start", {"message": message}), _PING]

    def _begin(self, block: dict[str, Any], is_text: bool) -> list[bytes]:
        events = self._close()
        self._open, self._open_is_text = self.blocks, is_text
        self.blocks += 1
        events.append(_event("content_block_start", {"index": self._open, "content_block": block}))
        return events

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [_event("content_block_stop", {"index": index})]

    def feed(self, delta: Delta) -> list[bytes]:
        """The events one delta adds (Anthropic has one choice: deltas of others are not expected)."""
        if delta.index < 0:
            if delta.usage is not None:
                self._usage = delta.usage
            return []
        events: list[bytes] = []
        if delta.text:
            if self._open is None or not self._open_is_text:
                events += self._begin({"type": "text", "text": ""}, is_text=True)
            text = {"type": "text_delta", "text": delta.text}
            events.append(_event("content_block_delta", {"index": self._open, "delta": text}))
        for call in delta.tool_calls:
            index = self._calls.get(call.index)
            if index is None:
                block = {
                    "type": "tool_use",
                    "id": tool_use_id(call.id or ""),
                    "name": call.name or "",
                    "input": {},
                }
                events += self._begin(block, is_text=False)
                index = self._calls[call.index] = self.blocks - 1
            if call.arguments:
                piece = {"type": "input_json_delta", "partial_json": call.arguments}
                events.append(_event("content_block_delta", {"index": index, "delta": piece}))
        if delta.finish_reason is not None:
            self._finish, self._stop_sequence = delta.finish_reason, delta.stop_sequence
        return events

    def end(self) -> list[bytes]:
        events = self._close()
        if self.blocks == 0:  # an empty answer is still one (empty) text block, as a whole answer is
            events += self._begin({"type": "text", "text": ""}, is_text=True)
            events += self._close()
        reason = stop_reason(self._finish, self._stop_sequence, context_full=self.context_full)
        stop = {
            "stop_reason": reason,
            "stop_sequence": self._stop_sequence if reason == "stop_sequence" else None,
        }
        events.append(_event("message_delta", {"delta": stop, "usage": usage_body(self._usage)}))
        events.append(_event("message_stop", {}))
        return events

    async def events(self, deltas: AsyncIterator[Delta]) -> AsyncGenerator[bytes, None]:
        """The whole SSE body for ``deltas``; closes them however the stream ends.

        ``message_start`` waits for the first delta, which may carry the prompt's usage: the pipeline
        has it at hand when the stream opens, so the wait costs nothing."""
        started = False
        try:
            async for delta in deltas:
                if not started:
                    started = True
                    for event in self.start(delta.usage):
                        yield event
                for event in self.feed(delta):
                    yield event
            last = self.end()
        except Exception as exc:
            last = [error_event(exc)]
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                await aclose()  # the client went away, or we are done: free the slot
        if not started:
            for event in self.start():
                yield event
        for event in last:
            yield event


def error_event(exc: BaseException) -> bytes:
    """A failure after the stream began, as an ``error`` event."""
    if not isinstance(exc, LLMHostError):
        log.warning("stream ended with an unexpected error", exc_info=exc)
    info = classify(exc)
    log.warning("stream ended with an error: %s", info.message)
    return _event("error", {"error": error_body(info)["error"]})

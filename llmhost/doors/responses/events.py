"""The Responses API's streaming events: :class:`Delta` objects in, SSE events out.

Each event is ``event: <type>\ndata: <json>`` with a ``sequence_number`` counting from 0; the items
they carry are built by :mod:`llmhost.doors.responses.translate`, the same helpers whole answers use,
so a streamed response and a whole one look alike.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llmhost.core.types import Delta, FinishReason, Usage
from llmhost.doors.common import stream_json
from llmhost.doors.responses.translate import (
    Item,
    failed,
    finished,
    function_call_item,
    item_id,
    logprobs_body,
    message_item,
    response_status,
)

__all__ = ["OnDone", "ResponseStream"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Open:
    """An output item being streamed: its position, its item dict, and the text or arguments so far."""

    index: int
    item: Item
    pieces: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.item["id"])

    @property
    def text(self) -> str:
        return "".join(self.pieces)


OnDone = Callable[[dict[str, Any]], Awaitable[None]]


class ResponseStream:
    """Deltas -> the Responses API's SSE events, in the order OpenAI sends them:

    ``response.created``, ``response.in_progress``; per message ``output_item.added``,
    ``content_part.added``, ``output_text.delta``..., ``output_text.done``, ``content_part.done``,
    ``output_item.done``; per function call ``output_item.added``, ``function_call_arguments.delta``...,
    ``function_call_arguments.done``, ``output_item.done``; then ``response.completed`` (or
    ``response.incomplete`` at the token limit, ``response.failed`` if the answer broke off).

    ``on_done`` sees the final response object before the last event goes out, so a client that reads
    ``response.completed`` and retrieves the response at once finds it stored.
    """

    def __init__(self, frame: dict[str, Any], *, on_done: OnDone | None = None) -> None:
        self.frame = frame
        self.on_done = on_done
        self.output: list[Item] = []
        self.final: dict[str, Any] | None = None
        self._seq = 0
        self._message: _Open | None = None
        self._calls: dict[int, _Open] = {}
        self._finish: FinishReason | None = None
        self._usage = Usage()

    def _event(self, type_: str, **fields: Any) -> bytes:
        payload = {"type": type_, **fields, "sequence_number": self._seq}
        self._seq += 1
        data = stream_json(payload).decode()
        return f"event: {type_}\ndata: {data}\n\n".encode()

    async def events(self, deltas: AsyncIterator[Delta]) -> AsyncIterator[bytes]:
        yield self._event("response.created", response=self.frame)
        yield self._event("response.in_progress", response=self.frame)
        try:
            async for delta in deltas:
                for event in self._on_delta(delta):
                    yield event
        except Exception as exc:
            self._mark_open("incomplete")
            yield await self._end(failed(self.frame, self.output, exc))
            return
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                await aclose()  # the client went away, or we are done: free the slot
        for event in self._close_all(response_status(self._finish)):
            yield event
        if not self.output:  # nothing was said: still one (empty) message, as whole answers have
            for event in self._open_message():
                yield event
            for event in self._close_all(response_status(self._finish)):
                yield event
        yield await self._end(finished(self.frame, self.output, self._finish, self._usage))

    async def _end(self, final: dict[str, Any]) -> bytes:
        if self.on_done is not None:
            try:
                await self.on_done(final)
            except Exception as exc:
                log.exception("could not store response %s", final["id"])
                final = failed(self.frame, self.output, exc)
        self.final = final
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}
        return self._event(kind.get(final["status"], "response.failed"), response=final)

    def _on_delta(self, d: Delta) -> Iterator[bytes]:
        if d.index < 0:
            if d.usage is not None:
                self._usage = d.usage
            return
        if d.index != 0:  # the Responses API has no ``n``: one answer per response
            return
        if d.text or d.logprobs:
            yield from self._close_calls("completed")
            if self._message is None:
                yield from self._open_message()
            msg = self._message
            assert msg is not None
            logprobs = logprobs_body(d.logprobs)
            msg.pieces.append(d.text)
            msg.logprobs.extend(logprobs)
            yield self._event(
                "response.output_text.delta",
                item_id=msg.id,
                output_index=msg.index,
                content_index=0,
                delta=d.text,
                logprobs=logprobs,
            )
        for c in d.tool_calls:
            call = self._calls.get(c.index)
            if call is None:  # calls stream one after another: the one before is done
                yield from self._close_message("completed")
                yield from self._close_calls("completed")
                item = function_call_item(
                    item_id("fc"), c.id or item_id("call"), c.name or "", "", "in_progress"
                )
                call = self._calls[c.index] = self._add(item)
                yield self._event("response.output_item.added", output_index=call.index, item=item)
            if c.arguments:
                call.pieces.append(c.arguments)
                yield self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.id,
                    output_index=call.index,
                    delta=c.arguments,
                )
        if d.finish_reason is not None:
            self._finish = d.finish_reason

    def _add(self, item: Item) -> _Open:
        self.output.append(item)
        return _Open(len(self.output) - 1, item)

    def _open_message(self) -> Iterator[bytes]:
        msg = self._message = self._add(message_item(item_id("msg"), "", "in_progress"))
        added = {**msg.item, "content": []}
        yield self._event("response.output_item.added", output_index=msg.index, item=added)
        yield self._event(
            "response.content_part.added",
            item_id=msg.id,
            output_index=msg.index,
            content_index=0,
            part=msg.item["content"][0],
        )

    def _close_message(self, status: str) -> Iterator[bytes]:
        msg, self._message = self._message, None
        if msg is None:
            return
        msg.item.update(message_item(msg.id, msg.text, status, msg.logprobs))
        part = msg.item["content"][0]
        where = {"item_id": msg.id, "output_index": msg.index, "content_index": 0}
        yield self._event("response.output_text.done", **where, text=msg.text, logprobs=msg.logprobs)
        yield self._event("response.content_part.done", **where, part=part)
        yield self._event("response.output_item.done", output_index=msg.index, item=msg.item)

    def _close_calls(self, status: str) -> Iterator[bytes]:
        calls, self._calls = self._calls, {}
        for call in sorted(calls.values(), key=lambda c: c.index):
            call.item.update(arguments=call.text, status=status)
            yield self._event(
                "response.function_call_arguments.done",
                item_id=call.id,
                output_index=call.index,
                name=call.item["name"],
                arguments=call.text,
            )
            yield self._event("response.output_item.done", output_index=call.index, item=call.item)

    def _close_all(self, status: str) -> Iterator[bytes]:
        yield from self._close_message(status)
        yield from self._close_calls(status)

    def _mark_open(self, status: str) -> None:
        """After a failure: what was streamed so far, in the items, without further events."""
        if self._message is not None:
            msg = self._message
            msg.item.update(message_item(msg.id, msg.text, status, msg.logprobs))
        for call in self._calls.values():
            call.item.update(arguments=call.text, status=status)

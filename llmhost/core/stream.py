"""Between whole answers and streams: assemble deltas into a :class:`Result`, replay a result as deltas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from llmhost.core.types import Choice, Delta, Result, ToolCall, ToolCallDelta, Usage

__all__ = ["ResultBuilder", "deltas_of", "merge_results", "merge_streams"]


class ResultBuilder:
    """Accumulates a stream's deltas into the whole answer it amounts to."""

    def __init__(self, id_: str, model: str, *, logprobs: bool = False) -> None:
        self.id = id_
        self.model = model
        self.logprobs = logprobs
        self.usage = Usage()
        self._choices: dict[int, Choice] = {}
        self._text: dict[int, list[str]] = {}
        self._calls: dict[int, dict[int, list[str]]] = {}  # choice -> call index -> [id, name, args...]

    def add(self, delta: Delta) -> None:
        if delta.usage is not None:
            self.usage = delta.usage
        if delta.index < 0:
            return
        choice = self._choices.get(delta.index)
        if choice is None:
            choice = self._choices[delta.index] = Choice(delta.index, logprobs=[] if self.logprobs else None)
            self._text[delta.index] = []
        if delta.text:
            self._text[delta.index].append(delta.text)
        if delta.logprobs and choice.logprobs is not None:
            choice.logprobs.extend(delta.logprobs)
        for call in delta.tool_calls:
            self._add_call(delta.index, call)
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason
            choice.stop_sequence = delta.stop_sequence
        if delta.tokens is not None:
            choice.tokens = list(delta.tokens)

    def _add_call(self, index: int, call: ToolCallDelta) -> None:
        calls = self._calls.setdefault(index, {})
        parts = calls.get(call.index)
        if parts is None:
            parts = calls[call.index] = [call.id or "", call.name or ""]
        else:
            parts[0] = parts[0] or call.id or ""
            parts[1] = parts[1] or call.name or ""
        parts.append(call.arguments)

    def result(self) -> Result:
        choices = []
        for index in sorted(self._choices):
            choice = self._choices[index]
            choice.text = "".join(self._text[index])
            calls = self._calls.get(index, {})
            choice.tool_calls = [
                ToolCall(parts[0], parts[1], "".join(parts[2:])) for _, parts in sorted(calls.items())
            ]
            choices.append(choice)
        return Result(self.id, self.model, choices or [Choice(0)], self.usage)


async def deltas_of(result: Result) -> AsyncIterator[Delta]:
    """A whole answer replayed as a stream (cascade routes decide on whole answers)."""
    for choice in result.choices:
        if choice.text or choice.logprobs:
            yield Delta(choice.index, choice.text, logprobs=tuple(choice.logprobs or ()))
        if choice.tool_calls:
            calls = tuple(
                ToolCallDelta(i, call.id, call.name, call.arguments)
                for i, call in enumerate(choice.tool_calls)
            )
            yield Delta(choice.index, tool_calls=calls)
        tokens = tuple(choice.tokens) if choice.tokens is not None else None
        yield Delta(
            choice.index,
            finish_reason=choice.finish_reason,
            stop_sequence=choice.stop_sequence,
            tokens=tokens,
        )
    yield Delta(-1, usage=result.usage)


def merge_results(results: Sequence[Result], n: int) -> Result:
    """Answers to several prompts as one: prompt ``k``'s choice ``j`` becomes choice ``k * n + j``
    (OpenAI's order for a list of prompts), the usage summed; id, model and target of the first."""
    first = results[0]
    choices = [replace(c, index=k * n + c.index) for k, r in enumerate(results) for c in r.choices]
    usage = sum((r.usage for r in results), Usage())
    return Result(first.id, first.model, choices, usage, first.created, first.target)


async def merge_streams(streams: Sequence[AsyncIterator[Delta]], n: int) -> AsyncIterator[Delta]:
    """Several prompts' streams as one, as they come: choices numbered as :func:`merge_results` does,
    one usage delta at the end with the sum. A failing stream ends the whole; closing it closes all."""
    queue: asyncio.Queue[tuple[int, Delta | Exception | None]] = asyncio.Queue()

    async def pump(k: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async for delta in stream:
                await queue.put((k, delta))
            await queue.put((k, None))
        except Exception as exc:
            await queue.put((k, exc))

    tasks = [asyncio.create_task(pump(k, s)) for k, s in enumerate(streams)]
    usage, live = Usage(), len(tasks)
    try:
        while live:
            k, item = await queue.get()
            if item is None:
                live -= 1
            elif isinstance(item, Exception):
                raise item
            elif item.index < 0:
                usage = usage + (item.usage or Usage())
            else:
                yield replace(item, index=k * n + item.index)
        yield Delta(-1, usage=usage)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

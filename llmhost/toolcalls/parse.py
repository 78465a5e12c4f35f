"""Reading a model's tool calls out of its output, while it is being written.

:class:`ToolCallParser` takes the text deltas of one choice and splits them into content (text for the
client) and :class:`~llmhost.core.types.ToolCallDelta` fragments: a call's first fragment carries its
``id`` and ``name`` as soon as the name is complete, later ones its argument text as it arrives.

Rules, in the order they matter:

- Text that may be the start of a call marker (``<tool_call>``, ``[TOOL_CALLS]``, ``<|python_tag|>``)
  is held back, like a stop string, so clients never see raw markers; a closing ``</tool_call>`` after
  a call is dropped. Whitespace between content and a call, and between calls, is dropped too.
- At the start of the message (and after a call) a bare call object -- ``{"name": ..., "arguments":
  ...}``, Llama 3's shape -- or, for ``mistral``, a call array counts as a call: their markers are control
  tokens a detokenizer may hide. Any other JSON there is content, held back only until its first key.
- A call naming a tool not in ``tools`` stays text (markers and all); so does a marker not followed by a
  call object. Once a call's name is out it is kept: if the call then breaks or the output ends inside
  it, its arguments are *completed* (open strings, objects and arrays closed, a missing value ``null``)
  so that they always parse, and :attr:`ToolCallParser.truncated` is set. A half-written call whose
  name never arrived becomes plain text again.
- Without ``parallel``, everything after the first complete call is ignored and :attr:`done` turns true,
  so the caller may stop generating.
- Arguments are passed on as the model wrote them (``arguments`` or ``parameters``, whichever comes
  first), an object as it arrives; arguments written as a JSON *string* holding JSON are decoded and,
  like any other non-object value, sent in one piece once complete. Whatever happens, every call's
  arguments parse as JSON.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from llmhost.core.types import Tool, ToolCall, ToolCallDelta
from llmhost.toolcalls.json_prefix import Incomplete, Invalid, completion, skip_ws, string_end, value_end
from llmhost.toolcalls.syntax import ToolSyntax, new_call_id

__all__ = ["ParsedEvent", "ToolCallParser", "parse_all"]

ParsedEvent = str | ToolCallDelta
"""What :meth:`ToolCallParser.feed` returns: content text, or a fragment of a tool call."""

_CALL_KEYS = frozenset({"name", "arguments", "parameters", "type", "id"})
_ARGUMENT_KEYS = ("arguments", "parameters")
_SKIPPED = -1


@dataclass(slots=True)
class _Obj:
    """One call object as scanned so far (positions index the region's text)."""

    start: int
    end: int | None = None  # after the closing brace, once complete
    name: str | None = None
    args_start: int | None = None
    args_end: int | None = None  # after the arguments value, once complete
    args_seen: int = 0  # the arguments text up to here is a valid prefix
    args_object: bool = False  # the arguments are an object, streamed as they arrive
    error: int | None = None


@dataclass(slots=True)
class _Region:
    objs: list[_Obj]
    end: int | None = None  # the region (marker to closing text) is complete up to here
    error: int | None = None  # the region stops being a call region here


class _ControlEscaper:
    """Escapes raw control characters inside JSON strings (models write raw newlines in code), so the
    arguments passed on are strict JSON; fed the text piece by piece."""

    def __init__(self) -> None:
        self.in_string = False
        self.after_backslash = False

    def __call__(self, text: str) -> str:
        out = []
        for c in text:
            if self.in_string:
                if self.after_backslash:
                    self.after_backslash = False
                elif c == "\\":
                    self.after_backslash = True
                elif c == '"':
                    self.in_string = False
                elif c < " ":
                    c = _ESCAPES.get(c) or f"\\u{ord(c):04x}"
            elif c == '"':
                self.in_string = True
            out.append(c)
        return "".join(out)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


@dataclass(slots=True)
class _Call:
    id: str
    name: str
    arguments: str = ""
    raw_sent: int = 0  # how much of the model's arguments text has been passed on
    escape: _ControlEscaper = field(default_factory=_ControlEscaper)
    done: bool = False


class _State(enum.Enum):
    TEXT = "text"
    REGION = "region"
    DONE = "done"


@dataclass(slots=True)
class _Pending:
    """The call region being read: the marker that opened it and the text after it."""

    marker: str  # "" when a bare opener ('{' / '[') started it; the opener is then body[0]
    lead: str  # whitespace dropped in front of it (given back if the region turns out to be text)
    body: str = ""
    slots: list[int] = field(default_factory=list)  # per scanned object: call index or _SKIPPED


def _scan_call(s: str, i: int) -> _Obj:
    """Scan the call object that starts at ``s[i] == '{'`` as far as the text goes."""
    obj = _Obj(i)
    n = len(s)
    try:
        j = skip_ws(s, i + 1)
        first = True
        while True:
            if j >= n:
                raise Incomplete
            if s[j] != '"':
                raise Invalid(j)
            key_end = string_end(s, j)
            key = json.loads(s[j:key_end], strict=False)
            if first and key not in _CALL_KEYS:
                raise Invalid(j)  # some other JSON object, not a call
            first = False
            j = skip_ws(s, key_end)
            if j >= n:
                raise Incomplete
            if s[j] != ":":
                raise Invalid(j)
            j = skip_ws(s, j + 1)
            if key in _ARGUMENT_KEYS and obj.args_start is None:
                obj.args_start = obj.args_seen = j
                obj.args_object = j < n and s[j] == "{"
                try:
                    end = value_end(s, j)
                except Incomplete:
                    obj.args_seen = n
                    raise
                except Invalid as exc:
                    obj.args_seen = exc.pos
                    raise
                obj.args_end = obj.args_seen = end
            else:
                end = value_end(s, j)
                if key == "name":
                    name = json.loads(s[j:end], strict=False)
                    if not isinstance(name, str):
                        raise Invalid(j)
                    obj.name = name
            j = skip_ws(s, end)
            if j >= n:
                raise Incomplete
            if s[j] == "}":
                obj.end = j + 1
                return obj
            if s[j] != ",":
                raise Invalid(j)
            j = skip_ws(s, j + 1)
    except Incomplete:
        pass
    except Invalid as exc:
        obj.error = exc.pos
    return obj


def _single(s: str, j: int) -> _Region:
    obj = _scan_call(s, j)
    return _Region([obj], end=obj.end, error=obj.error)


def _scan_region(syntax: ToolSyntax, s: str) -> _Region:
    """Scan a call region's text (after its marker) as far as it goes."""
    n = len(s)
    j = skip_ws(s, 0)
    if j >= n:
        return _Region([])
    if syntax is ToolSyntax.MISTRAL and s[j] == "[":
        return _scan_array(s, j)
    if s[j] != "{":
        return _Region([], error=j)
    region = _single(s, j)
    end_marker = syntax.end_marker
    if region.end is None or not end_marker:
        return region
    k = skip_ws(s, region.end)
    if s.startswith(end_marker, k):
        region.end = k + len(end_marker)
    elif end_marker.startswith(s[k:]):
        region.end = None  # the closing tag may still be coming; the call itself is complete
    return region


def _scan_array(s: str, j: int) -> _Region:
    n = len(s)
    objs: list[_Obj] = []
    j = skip_ws(s, j + 1)
    while True:
        if j >= n:
            return _Region(objs)
        if s[j] != "{":
            return _Region(objs, error=j)
        obj = _scan_call(s, j)
        objs.append(obj)
        if obj.end is None:
            return _Region(objs, error=obj.error)
        j = skip_ws(s, obj.end)
        if j >= n:
            return _Region(objs)
        if s[j] == "]":
            return _Region(objs, end=j + 1)
        if s[j] != ",":
            return _Region(objs, error=j)
        j = skip_ws(s, j + 1)


class ToolCallParser:
    """Splits one choice's streamed text into content and tool-call fragments (see the module doc).

    ``tools`` are the tools a call may name (for a named ``tool_choice``, just that one).
    """

    def __init__(self, syntax: ToolSyntax, tools: Iterable[Tool], *, parallel: bool = True) -> None:
        self.syntax = syntax
        self.parallel = parallel
        self._names = frozenset(tool.name for tool in tools)
        self._starts = syntax.start_markers
        self._swallow = (syntax.end_marker,) if syntax.end_marker else ()
        self._markers = self._starts + self._swallow
        self._openers = "{[" if syntax is ToolSyntax.MISTRAL else "{"
        self._state = _State.TEXT
        self._text = ""  # unconsumed text in the TEXT state
        self._region: _Pending | None = None
        self._at_boundary = True  # the message start, or right after a call
        self._after_call = False
        self._calls: list[_Call] = []
        self._content: list[str] = []
        self._out: list[ParsedEvent] = []
        self._finished = False
        self.truncated = False
        """A call was cut off (by the end of the output, or broken JSON) and its arguments completed."""

    # ----- public ---------------------------------------------------------------------------------
    def feed(self, text: str) -> list[ParsedEvent]:
        """Add a text delta; return the content and call fragments that are now certain."""
        if self._finished or not text:
            return []
        if self._state is _State.REGION:
            assert self._region is not None
            self._region.body += text
        elif self._state is _State.TEXT:
            self._text += text
        self._advance(final=False)
        return self._take()

    def finish(self) -> list[ParsedEvent]:
        """The output ended: flush held text, and settle a call still open (see the module doc)."""
        if self._finished:
            return []
        self._advance(final=True)
        self._finished = True
        return self._take()

    @property
    def parsed_calls(self) -> list[ToolCall]:
        """The calls read so far (all of them, after :meth:`finish`)."""
        return [ToolCall(call.id, call.name, call.arguments) for call in self._calls]

    @property
    def content(self) -> str:
        """All content text passed on so far."""
        return "".join(self._content)

    @property
    def done(self) -> bool:
        """Nothing more the model writes can change the answer (one call read, ``parallel`` off)."""
        return self._state is _State.DONE

    # ----- driving --------------------------------------------------------------------------------
    def _take(self) -> list[ParsedEvent]:
        out, self._out = self._out, []
        return out

    def _emit_text(self, text: str) -> None:
        if not text:
            return
        self._content.append(text)
        if self._out and isinstance(self._out[-1], str):
            self._out[-1] += text
        else:
            self._out.append(text)

    def _advance(self, final: bool) -> None:
        while True:
            if self._state is _State.REGION:
                if not self._update_region(final):
                    return
            elif self._state is _State.TEXT:
                if not self._scan_text(final):
                    return
            else:
                self._text = ""
                return

    def _open_region(self, marker: str, lead: str, body: str) -> None:
        self._region = _Pending(marker, lead, body)
        self._state = _State.REGION
        self._text = ""

    # ----- content --------------------------------------------------------------------------------
    def _scan_text(self, final: bool) -> bool:
        """Pass on the content in the held text; True when a call region opened."""
        s = self._text
        while s:
            if self._at_boundary:
                j = skip_ws(s, 0)
                if j == len(s):
                    if final:
                        if not self._after_call:
                            self._emit_text(s)
                        s = ""
                    break
                c = s[j]
                if self._after_call and self.syntax is ToolSyntax.LLAMA3 and c in ";,":
                    s = s[j + 1 :]
                    continue
                started = next((m for m in self._starts if s.startswith(m, j)), None)
                if started is not None:
                    self._open_region(started, s[:j], s[j + len(started) :])
                    return True
                swallowed = next((m for m in self._swallow if s.startswith(m, j)), None)
                if swallowed is not None and self._after_call:
                    s = s[j + len(swallowed) :]
                    continue
                held = self._markers if self._after_call else self._starts
                if not final and any(m.startswith(s[j:]) for m in held):
                    break  # may still become a marker
                if c in self._openers:
                    self._open_region("", s[:j], s[j:])
                    return True
                if not self._after_call:
                    self._emit_text(s[:j])
                s = s[j:]
                self._at_boundary = False
                self._after_call = False
            at, marker = self._find_marker(s)
            if marker:
                before = s[:at]
                kept = before.rstrip()
                self._emit_text(kept)
                self._open_region(marker, before[len(kept) :], s[at + len(marker) :])
                return True
            hold = 0 if final else self._held_back(s)
            self._emit_text(s[: len(s) - hold])
            s = s[len(s) - hold :]
            break
        self._text = s
        return False

    def _find_marker(self, s: str) -> tuple[int, str]:
        best, found = -1, ""
        for marker in self._starts:
            at = s.find(marker)
            if at != -1 and (best == -1 or at < best):
                best, found = at, marker
        return best, found

    def _held_back(self, s: str) -> int:
        """How much of the end of ``s`` to hold: a proper prefix of a marker, and whitespace before it."""
        hold = 0
        for marker in self._starts:
            for k in range(min(len(marker) - 1, len(s)), hold, -1):
                if s.endswith(marker[:k]):
                    hold = k
                    break
        rest = s[: len(s) - hold]
        return len(s) - len(rest.rstrip())

    # ----- calls ----------------------------------------------------------------------------------
    def _update_region(self, final: bool) -> bool:
        """Read the open region again; emit what became certain. True when the region is over."""
        region = self._region
        assert region is not None
        body = region.body
        scan = _scan_region(self.syntax, body)
        for k, obj in enumerate(scan.objs):
            if k == len(region.slots):
                if obj.name is None:
                    break
                if obj.name not in self._names or (not self.parallel and self._calls):
                    if not self._committed(region):
                        self._revert()
                        return True
                    region.slots.append(_SKIPPED)
                    continue
                call = _Call(new_call_id(self.syntax), obj.name)
                region.slots.append(len(self._calls))
                self._out.append(ToolCallDelta(len(self._calls), id=call.id, name=call.name))
                self._calls.append(call)
            slot = region.slots[k]
            if slot == _SKIPPED or self._calls[slot].done:
                continue
            self._extend_arguments(slot, obj, body)
            if obj.end is not None:
                self._close_call(slot, cut=False)
                if not self.parallel:
                    self._state = _State.DONE
                    self._region = None
                    return True
            elif obj.error is not None:
                self._close_call(slot, cut=True)
        if scan.error is not None or (final and scan.end is None):
            if not self._committed(region):
                self._revert()
                return True
            for slot in region.slots:
                if slot != _SKIPPED and not self._calls[slot].done:
                    self._close_call(slot, cut=True)
            self._end_region(len(body) if scan.error is None else scan.error)
            return True
        if scan.end is not None:
            if not self._committed(region):
                self._revert()  # complete, but no call in it (no name)
            else:
                self._end_region(scan.end)
            return True
        return False

    def _extend_arguments(self, slot: int, obj: _Obj, body: str) -> None:
        call = self._calls[slot]
        if obj.args_start is None:
            return
        if not obj.args_object:
            if obj.args_end is not None and not call.arguments:
                whole = _whole_arguments(body[obj.args_start : obj.args_end])
                self._send_arguments(slot, _ControlEscaper()(whole))
            return
        upto = obj.args_end if obj.args_end is not None else obj.args_seen
        sent = obj.args_start + call.raw_sent
        if upto > sent:
            call.raw_sent += upto - sent
            self._send_arguments(slot, call.escape(body[sent:upto]))

    def _send_arguments(self, slot: int, text: str) -> None:
        if text:
            self._calls[slot].arguments += text
            self._out.append(ToolCallDelta(slot, arguments=text))

    def _close_call(self, slot: int, *, cut: bool) -> None:
        call = self._calls[slot]
        if not call.arguments.strip():
            self._send_arguments(slot, "{}")
        elif cut:
            self._send_arguments(slot, completion(call.arguments))
        if cut:
            self.truncated = True
        call.done = True

    def _committed(self, region: _Pending) -> bool:
        return any(slot != _SKIPPED for slot in region.slots)

    def _end_region(self, end: int) -> None:
        region = self._region
        assert region is not None
        self._text = region.body[end:] + self._text
        self._region = None
        self._state = _State.TEXT
        self._at_boundary = True
        self._after_call = True

    def _revert(self) -> None:
        """The region is not a call after all: its marker becomes text, and the rest is read again."""
        region = self._region
        assert region is not None
        if region.marker:
            shown, rest = region.marker, region.body
        else:
            shown, rest = region.body[:1], region.body[1:]
        self._emit_text((region.lead if not self._after_call else "") + shown)
        self._text = rest + self._text
        self._region = None
        self._state = _State.TEXT
        self._at_boundary = False
        self._after_call = False


def _whole_arguments(text: str) -> str:
    """Arguments that are not an object: a JSON string holding JSON is decoded; anything else is
    passed on as the JSON it is."""
    value = json.loads(text, strict=False)
    if isinstance(value, str):
        try:
            json.loads(value, strict=False)  # raw control characters get escaped afterwards
        except ValueError:
            return text
        return value
    return text


def parse_all(
    syntax: ToolSyntax, tools: Sequence[Tool], text: str, *, parallel: bool = True
) -> tuple[str, list[ToolCall]]:
    """Parse a whole output at once: its content and its calls."""
    parser = ToolCallParser(syntax, tools, parallel=parallel)
    parser.feed(text)
    parser.finish()
    return parser.content, parser.parsed_calls

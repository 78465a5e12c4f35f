"""Scanning JSON that is still being written: where a value ends, and how to finish a cut-off one.

The tool-call parser reads call objects while tokens arrive, so it needs to tell "not finished yet"
(:class:`Incomplete`) from "not JSON" (:class:`Invalid`, with the position of the fault), and, when a
call is cut off for good, the shortest text that makes what was written parse (:func:`completion`).
"""

from __future__ import annotations

import re

__all__ = ["Incomplete", "Invalid", "completion", "skip_ws", "string_end", "value_end"]

WS = " \t\n\r"
_MAX_DEPTH = 128
_STRING_RUN = re.compile(r'[^"\\]*')
_HEX = frozenset("0123456789abcdefABCDEF")
_NUMBER_CHARS = frozenset("+-0123456789.eE")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NUMBER_PREFIX = re.compile(r"-|-?(?:0|[1-9]\d*)(?:\.|\.\d+(?:[eE][+-]?\d*)?|[eE][+-]?\d*)?")
_LITERALS = ("true", "false", "null")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[-+0-9.eE]+|true|false|null|[ \t\n\r]+')


class Incomplete(Exception):
    """The text ends before the value does."""


class Invalid(Exception):
    """The text is not JSON from ``pos`` on: ``s[:pos]`` is still the start of a JSON text, so what a
    stream passed on before the fault can always be completed."""

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


def skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in WS:
        i += 1
    return i


def string_end(s: str, i: int) -> int:
    """Index after the string literal that starts at ``s[i] == '"'``."""
    n = len(s)
    i += 1
    while True:
        i = _STRING_RUN.match(s, i).end()  # type: ignore[union-attr]  # the pattern matches ""
        if i >= n:
            raise Incomplete
        if s[i] == '"':
            return i + 1
        if i + 1 >= n:
            raise Incomplete
        escape = s[i + 1]
        if escape == "u":
            digits = s[i + 2 : i + 6]
            bad = next((k for k, c in enumerate(digits) if c not in _HEX), None)
            if bad is not None:
                raise Invalid(i + 2 + bad)
            if len(digits) < 4:
                raise Incomplete
            i += 6
        elif escape in '"\\/bfnrt':
            i += 2
        else:
            raise Invalid(i + 1)


def value_end(s: str, i: int, depth: int = 0) -> int:
    """Index after the JSON value that starts at ``s[i]``."""
    n = len(s)
    if i >= n:
        raise Incomplete
    c = s[i]
    if c == '"':
        return string_end(s, i)
    if c in "{[":
        return _container_end(s, i, depth)
    if c in "-0123456789":
        j = i
        while j < n and s[j] in _NUMBER_CHARS:
            j += 1
        if j < n and _NUMBER.fullmatch(s, i, j):
            return j
        good = _number_prefix_end(s, i, j)
        if good == j == n:
            raise Incomplete  # more digits may follow
        raise Invalid(good)
    for literal in _LITERALS:
        if s.startswith(literal, i):
            return i + len(literal)
        if literal.startswith(s[i:]):
            raise Incomplete
    for literal in _LITERALS:
        if s.startswith(literal[0], i):
            k = 1
            while i + k < n and s[i + k] == literal[k]:
                k += 1
            raise Invalid(i + k)
    raise Invalid(i)


def _number_prefix_end(s: str, i: int, j: int) -> int:
    """Where ``s[i:j]`` stops being the start of a JSON number (``j`` if it never does)."""
    for k in range(j, i, -1):
        if _NUMBER_PREFIX.fullmatch(s, i, k):
            return k
    return i


def _container_end(s: str, i: int, depth: int) -> int:
    if depth >= _MAX_DEPTH:
        raise Invalid(i)
    n = len(s)
    is_object = s[i] == "{"
    close = "}" if is_object else "]"
    i = skip_ws(s, i + 1)
    if i >= n:
        raise Incomplete
    if s[i] == close:
        return i + 1
    while True:
        if is_object:
            if i >= n:
                raise Incomplete
            if s[i] != '"':
                raise Invalid(i)
            i = skip_ws(s, string_end(s, i))
            if i >= n:
                raise Incomplete
            if s[i] != ":":
                raise Invalid(i)
            i = skip_ws(s, i + 1)
        i = skip_ws(s, value_end(s, i, depth + 1))
        if i >= n:
            raise Incomplete
        if s[i] == close:
            return i + 1
        if s[i] != ",":
            raise Invalid(i)
        i = skip_ws(s, i + 1)


def completion(prefix: str) -> str:
    """The shortest text to append to ``prefix`` -- the start of a JSON value, valid as far as it goes --
    so that the whole parses: close the open string (and escape), number or literal, fill a missing value
    with ``null`` (a missing key with ``""``), then close the open objects and arrays."""
    stack: list[str] = []
    expect = "value"  # value | key | key_or_close | value_or_close | colon | comma_or_close | done
    pos, n = 0, len(prefix)

    def after_value() -> str:
        return "comma_or_close" if stack else "done"

    while pos < n:
        match = _TOKEN.match(prefix, pos)
        if match is None:
            break
        token = match.group()
        if match.end() == n and token[0] in "-+0123456789.eE" and not _NUMBER.fullmatch(token):
            break  # a number still being written
        pos = match.end()
        if token[0] in WS:
            continue
        if token in ("{", "["):
            stack.append(token)
            expect = "key_or_close" if token == "{" else "value_or_close"
        elif token in ("}", "]"):
            if stack:
                stack.pop()
            expect = after_value()
        elif token == ":":
            expect = "value"
        elif token == ",":
            expect = "key" if stack and stack[-1] == "{" else "value"
        elif expect in ("key", "key_or_close"):
            expect = "colon"
        else:
            expect = after_value()
    rest = prefix[pos:]
    out = ""
    if rest.startswith('"'):
        out += _finish_escape(rest) + '"'
        expect = "colon" if expect in ("key", "key_or_close") else after_value()
    elif rest and rest[0] in "-0123456789":
        out += "0" if rest[-1] in "-+.eE" else ""
        expect = after_value()
    elif rest:
        out += next((lit[len(rest) :] for lit in _LITERALS if lit.startswith(rest)), "")
        expect = after_value()
    if expect == "colon":
        out += ":null"
    elif expect == "key":
        out += '"":null'
    elif expect == "value":
        out += "null"
    return out + "".join("}" if c == "{" else "]" for c in reversed(stack))


def _finish_escape(partial: str) -> str:
    """What an unterminated string literal needs before its closing quote (a cut-off escape)."""
    i, n = 1, len(partial)
    while i < n:
        if partial[i] != "\\":
            i += 1
            continue
        if i + 1 >= n:
            return "\\"
        if partial[i + 1] == "u":
            digits = partial[i + 2 : i + 6]
            if len(digits) < 4:
                return "0" * (4 - len(digits))
            i += 6
        else:
            i += 2
    return ""

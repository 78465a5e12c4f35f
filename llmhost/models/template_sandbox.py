"""The Jinja sandbox chat templates render in, with bounds on time and size.

Templates come from GGUF metadata or the configuration, so they are untrusted code. Jinja's
:class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` already refuses attribute escapes, mutation of
lists and dicts, and ``range`` over more than ``MAX_RANGE`` (100,000) items. It does not bound work:
``{% for i in range(100000) %}{% for j in range(100000) %}...`` runs for hours, and ``'x' * 10**10`` or a
string doubled in a loop takes all memory. Here:

- **time**: every loop iteration and every macro (or ``{% call %}``) body starts with a check of the
  render's deadline, added to the template's syntax tree when it is compiled; a template can only run
  long by looping or recursing, so this stops any render shortly after its deadline. The check costs a
  function call per iteration (tracing every template line, the other way, made renders 3-4x slower).
- **output**: the render stops once its output passes ``max_chars``.
- **size of intermediate values**: the operators and filters that can grow a string, list or integer
  faster than the output does (``*``, ``**``, ``+``, ``%``, ``~``; ``center``, ``indent``, ``replace``,
  ``join``, ``format``, ``wordwrap``, ``tojson``; ``str.ljust`` and friends) check the size of their
  result before they build it, against the same ``max_chars``; a ``map`` stops once what it produced
  passes four times that.

A render that trips a bound raises :class:`RenderLimitError`; the template module reports it as a
client error (400) on ``messages``.
"""

from __future__ import annotations

import re
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from jinja2 import Environment, Template, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Undefined, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "DEFAULT_MAX_CHARS",
    "DEFAULT_TIME_LIMIT",
    "BoundedSandbox",
    "PromptTooLongError",
    "RenderLimitError",
    "render_bounded",
    "render_limits",
]

DEFAULT_TIME_LIMIT = 2.0  # CPU seconds of the rendering thread; an ordinary chat renders in milliseconds
DEFAULT_MAX_CHARS = 4 << 20  # characters, for renders that name no limit of their own (probes, tests)
_MAX_INT_BITS = 4096  # far beyond any number a chat template prints
_TICK = "llmhost_deadline"  # the filter each loop iteration and macro body calls first


class RenderLimitError(Exception):
    """A render ran out of time, or built (or was about to build) a value over its size limit."""


class PromptTooLongError(RenderLimitError):
    """The rendered text itself passed ``max_chars``."""

    def __init__(self, max_chars: int) -> None:
        super().__init__(f"the rendered prompt is longer than {max_chars} characters")
        self.max_chars = max_chars


class _Bounds(threading.local):
    """The limits of the render running in this thread (renders never share a thread at once)."""

    max_chars: int = DEFAULT_MAX_CHARS
    deadline: float | None = None
    seconds: float = DEFAULT_TIME_LIMIT


_bounds = _Bounds()


def _check_size(n: int, what: str = "a string") -> None:
    if n > _bounds.max_chars:
        raise RenderLimitError(f"the template built {what} of more than {_bounds.max_chars} characters")


def _check_int(value: int) -> None:
    if value.bit_length() > _MAX_INT_BITS:
        raise RenderLimitError(f"the template built an integer of more than {_MAX_INT_BITS} bits")


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else len(str(value))


# Widths and precisions in a format string ("%0999999999d", "{:>999999999}") allocate before anything
# can look at the result: refuse a format string with any number in it larger than the size limit.
_DIGITS = re.compile(r"\d+")


def _check_format_string(fmt: str, args: Any) -> None:
    for run in _DIGITS.findall(fmt):
        if len(run) > 12 or int(run) > _bounds.max_chars:
            raise RenderLimitError(f"the format string asks for a width over {_bounds.max_chars}")
    # Widths taken from the arguments: "%*d" and "{:{w}}".
    if "*" in fmt or re.search(r"\{[^{}]*:[^{}]*\{", fmt):
        values = args.values() if isinstance(args, Mapping) else args if isinstance(args, tuple) else (args,)
        for value in values:
            if isinstance(value, int) and abs(value) > _bounds.max_chars:
                raise RenderLimitError(f"the format string asks for a width over {_bounds.max_chars}")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise RenderLimitError(f"the template built an integer of more than {_MAX_INT_BITS} bits")
            return
        seq, count = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(seq, str | list | tuple) and isinstance(count, int):
            _check_size(len(seq) * max(count, 0), "a value")
    elif operator == "**":
        ints = isinstance(left, int) and isinstance(right, int)
        if ints and right > 0 and abs(left) > 1 and abs(left).bit_length() * right > _MAX_INT_BITS:
            raise RenderLimitError(f"the template built an integer of more than {_MAX_INT_BITS} bits")
    elif operator == "+":
        if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            _check_size(len(left) + len(right), "a value")
    elif operator == "%" and isinstance(left, str):
        _check_format_string(left, right)


def _checked_join(seq: tuple[Any, ...]) -> str:
    """The ``~`` operator (and string interpolation), sized before it is joined."""
    _check_size(sum(_sized(x) for x in seq))
    return str_join(seq)


def _checked_markup_join(seq: tuple[Any, ...]) -> str:
    _check_size(sum(_sized(x) for x in seq))
    return markup_join(seq)


# ----- str methods and filters that grow strings: an upper bound on the result, checked first ------
def _replace_size(s: str, old: str, new: str, count: int = -1) -> int:
    hits = len(s) + 1 if old == "" else s.count(old)
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * len(new)


def _join_size(sep: str, items: list[Any]) -> int:
    return sum(_sized(x) for x in items) + len(sep) * max(len(items) - 1, 0)


_STR_METHOD_SIZES: Mapping[str, Callable[..., int]] = {
    "ljust": lambda s, width, *a: max(len(s), width),
    "rjust": lambda s, width, *a: max(len(s), width),
    "center": lambda s, width, *a: max(len(s), width),
    "zfill": lambda s, width: max(len(s), width),
    "expandtabs": lambda s, tabsize=8: len(s) + s.count("\t") * max(tabsize, 0),
    "replace": _replace_size,
}


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``~`` to a join that checks the size of its result first."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            func_name = (
                "(environment.bounded_markup_join if context.eval_ctx.volatile else environment.bounded_join)"
            )
        elif frame.eval_ctx.autoescape:
            func_name = "environment.bounded_markup_join"
        else:
            func_name = "environment.bounded_join"
        self.write(f"{func_name}((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _guard_filter(env: Environment, name: str, size: Callable[..., int]) -> None:
    original = env.filters[name]
    # Filters that take the environment or context get it first; the value comes after it.
    skip = 1 if getattr(original, "jinja_pass_arg", None) is not None else 0

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if len(args) > skip and isinstance(args[skip], Iterator):
            args = (*args[:skip], list(args[skip]), *args[skip + 1 :])  # an iterator is read once
        _check_size(size(*args[skip:], **kwargs))
        return original(*args, **kwargs)

    guarded.jinja_pass_arg = getattr(original, "jinja_pass_arg", None)  # type: ignore[attr-defined]
    env.filters[name] = guarded


def _indent_size(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> int:
    text = str(s)
    pad = len(width) if isinstance(width, str) else max(int(width), 0)
    return len(text) + pad * (text.count("\n") + 1)


def _wordwrap_size(
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> int:
    text = str(s)
    lines = len(text) // max(int(width), 1) + text.count("\n") + 1
    return len(text) + lines * len(wrapstring or "\n")


def _tojson_size(value: Any, indent: int | None = None, *args: Any, **kwargs: Any) -> int:
    if indent is not None and (not isinstance(indent, int) or indent > 16):
        raise RenderLimitError("tojson indent over 16 is refused")
    return 0


def _filter_join_size(value: Any, d: str = "", attribute: Any = None) -> int:
    return _join_size(str(d), [value] if isinstance(value, str) else list(value))


def _format_size(value: Any, *args: Any, **kwargs: Any) -> int:
    _check_format_string(str(value), kwargs or args)
    return len(str(value))


@pass_context
def _deadline_check(context: Context, value: Any) -> str:
    """The check at the top of each loop iteration and macro body: past the deadline, stop."""
    deadline = _bounds.deadline
    if deadline is not None and time.thread_time() > deadline:
        raise RenderLimitError(f"rendering took longer than {_bounds.seconds:g} s")
    return ""


def _add_deadline_checks(tree: nodes.Template) -> None:
    for node in tree.find_all((nodes.For, nodes.Macro, nodes.CallBlock)):
        assert isinstance(node, nodes.For | nodes.Macro | nodes.CallBlock)
        check = nodes.Filter(nodes.Const(""), _TICK, [], [], None, None, lineno=node.lineno)
        node.body.insert(0, nodes.ExprStmt(check, lineno=node.lineno))


def _sized_stream(items: Iterable[Any]) -> Iterator[Any]:
    total = 0
    for item in items:
        total += len(item) if isinstance(item, str | list | tuple) else 1
        if total > 4 * _bounds.max_chars:
            raise RenderLimitError(f"a map produced more than {4 * _bounds.max_chars} characters")
        yield item


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, strict about unsafe attributes and bounded in the size of what it
    builds (see the module docstring); :func:`render_bounded` adds the time and output bounds.

    Jinja's sandbox answers an unsafe attribute lookup (``x.__class__``, ``list.append``) with an
    undefined value that only fails when used further; here the lookup itself fails, so an escape
    attempt can never render silently as an empty string.
    """

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bounded_join = _checked_join
        self.bounded_markup_join = _checked_markup_join
        _guard_filter(self, "center", lambda s, width=80: max(len(str(s)), int(width)))
        _guard_filter(self, "indent", _indent_size)
        _guard_filter(self, "replace", lambda s, old, new, count=None: _replace_size(str(s), old, new, count))
        _guard_filter(self, "join", _filter_join_size)
        _guard_filter(self, "wordwrap", _wordwrap_size)
        _guard_filter(self, "format", _format_size)
        self.filters[_TICK] = _deadline_check
        original_map = self.filters["map"]

        @pass_context
        def bounded_map(context: Context, value: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            return _sized_stream(original_map(context, value, *args, **kwargs))

        self.filters["map"] = bounded_map

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        _add_deadline_checks(tree)
        return tree

    def guard_filters(self) -> None:
        """Check the size of filters registered after construction (``tojson``)."""
        if "tojson" in self.filters:
            _guard_filter(self, "tojson", _tojson_size)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # The sandbox hands out str.format as a wrapper around the bound method.
        method = getattr(__obj, "__wrapped__", __obj)
        if isinstance(method, types.BuiltinMethodType) and isinstance(method.__self__, str):
            name, text = method.__name__, method.__self__
            size = _STR_METHOD_SIZES.get(name)
            if size is not None:
                _check_size(size(text, *args, **kwargs))
            elif name == "join" and args:
                items = list(args[0])
                _check_size(_join_size(text, items))
                args = (items, *args[1:])
            elif name in ("format", "format_map"):
                _check_format_string(text, kwargs or (args[0] if name == "format_map" and args else args))
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, int) and not isinstance(result, bool):
            _check_int(result)
        return result


@contextmanager
def render_limits(max_chars: int | None = None, time_limit: float | None = None) -> Iterator[None]:
    """Bound the renders inside the block: ``None`` keeps the enclosing block's limit (else the
    default); a nested block can only tighten them. Blocks the thread it runs in for at most about
    ``time_limit`` seconds, so a caller on an event loop runs it in a worker thread."""
    outer = _bounds.max_chars, _bounds.deadline, _bounds.seconds
    nested = outer[1] is not None
    chars = max_chars if max_chars is not None else (outer[0] if nested else DEFAULT_MAX_CHARS)
    seconds = time_limit if time_limit is not None else (outer[2] if nested else DEFAULT_TIME_LIMIT)
    # The rendering thread's CPU time, not the wall clock: a render that waits for a busy core (or the
    # GIL) is not a runaway template, and refusing it was a 400 for an ordinary chat under load.
    deadline = time.thread_time() + seconds
    if outer[1] is not None and outer[1] < deadline:
        deadline, seconds = outer[1], outer[2]
    if nested:
        chars = min(chars, outer[0])
    _bounds.max_chars, _bounds.deadline, _bounds.seconds = chars, deadline, seconds
    try:
        yield
    finally:
        _bounds.max_chars, _bounds.deadline, _bounds.seconds = outer


def render_bounded(
    template: Template,
    context: Mapping[str, Any],
    *,
    max_chars: int | None = None,
    time_limit: float | None = None,
) -> str:
    """Render ``template`` within ``time_limit`` seconds and ``max_chars`` characters of output (and of
    any value it builds), as :func:`render_limits` sets them; raise :class:`RenderLimitError` past
    either."""
    with render_limits(max_chars, time_limit):
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(**context):
            size += len(chunk)
            if size > _bounds.max_chars:
                raise PromptTooLongError(_bounds.max_chars)
            chunks.append(chunk)
        return "".join(chunks)

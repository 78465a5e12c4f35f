"""Go's time formats as Ollama's wire uses them: ``keep_alive`` durations and RFC 3339 timestamps."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

from llmhost.errors import RequestError

__all__ = ["GO_MAX_SECONDS", "parse_keep_alive", "rfc3339"]

_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9}
_UNITS_NS["h"] = 3600 * 10**9
_FOREVER = -1.0
GO_MAX_SECONDS = (2**63 - 1) / 1e9
"""The longest Go ``time.Duration`` (about 292 years): Ollama's "forever", and the most any duration is."""
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_PART.pattern})+")


def rfc3339(ts: float | None = None) -> str:
    """``ts`` (default: now) the way Go writes a UTC ``time.Time``: RFC 3339, trailing zeros cut."""
    ns = time.time_ns() if ts is None else round(ts * 1e6) * 1000  # a float holds microseconds
    seconds, frac = divmod(ns, 10**9)
    head = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    tail = f".{frac:09d}".rstrip("0") if frac else ""
    return f"{head}{tail}Z"


def parse_keep_alive(value: float | str | None) -> float | None:
    """``keep_alive`` in seconds: ``None`` when not given, a negative number for "forever".

    Numbers are seconds; strings are Go durations (``"5m"``, ``"1h30m"``, ``"300ms"``) or a bare number
    of seconds. Any negative duration means forever, as in Ollama; so does one longer than a Go
    duration can hold (Ollama's Go decoder would overflow on it), infinity included.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise RequestError("keep_alive must be a number of seconds or a duration string", "keep_alive")
    seconds = float(value) if isinstance(value, int | float) else _go_duration(value.strip())
    if math.isnan(seconds):
        raise RequestError("keep_alive must be a number of seconds or a duration string", "keep_alive")
    return _FOREVER if seconds < 0 or seconds >= GO_MAX_SECONDS else seconds


def _go_duration(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    rest = text[1:] if text[:1] in "+-" else text
    if not rest or not _DURATION.fullmatch(rest):
        raise RequestError(
            f'keep_alive {text!r} is not a duration (use seconds, or e.g. "5m", "1h30m", "-1")',
            param="keep_alive",
        )
    return sign * sum(float(n) * _UNITS_NS[unit] for n, unit in _PART.findall(rest)) / 1e9

"""Sizes and durations as people write them in the config: ``8GiB``, ``512MB``, ``30s``, ``5m``."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field

__all__ = ["Duration", "Size", "parse_duration", "parse_size"]

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: int | str) -> int:
    """``8GiB``, ``512MB``, ``1000000`` -> bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {value!r} (use e.g. 8GiB, 512MB or a number of bytes)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: float | str) -> float:
    """``5m``, ``30s``, ``1h``, ``30d``, ``-1`` (forever) -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(ms|[smhd]?)\s*", value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 30s, 5m, 1h, 30d, or -1 for forever)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Duration = Annotated[float, BeforeValidator(parse_duration)]

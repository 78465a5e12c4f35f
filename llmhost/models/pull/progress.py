"""What a pull reports: :class:`PullProgress` events, one per line of Ollama's ``/api/pull`` answer.

:class:`_Reporter` hands them to the caller's ``progress`` callback, and throttles the frequent ones
(``downloading``, ``registering``) to one every :data:`_PROGRESS_INTERVAL_S`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_PROGRESS_INTERVAL_S = 0.1


@dataclass(frozen=True)
class PullProgress:
    """One progress event; :meth:`to_json` is one line of ``/api/pull``'s streamed answer."""

    status: str
    """``resolving``, ``downloading``, ``verifying``, ``registering`` or ``success``."""
    total: int | None = None
    completed: int | None = None
    digest: str | None = None
    """``sha256:<hex>`` of the file being pulled, once known."""
    detail: str | None = None
    """The file being pulled (``downloading``), or the model name registered (``success``)."""

    def to_dict(self) -> dict[str, Any]:
        """The event as a dict without its unset fields (Ollama's shape plus ``detail``)."""
        out: dict[str, Any] = {"status": self.status}
        for key in ("digest", "total", "completed", "detail"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


ProgressFn = Callable[[PullProgress], None]


class _Reporter:
    def __init__(self, progress: ProgressFn | None) -> None:
        self.progress = progress
        self._last = 0.0

    def __call__(self, event: PullProgress) -> None:
        if self.progress is not None:
            self.progress(event)

    def throttled(self, event: PullProgress, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= _PROGRESS_INTERVAL_S:
            self._last = now
            self(event)

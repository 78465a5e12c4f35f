"""Incremental detokenization with stop strings.

Tokens arrive one at a time as bytes; a UTF-8 character may span tokens, and a stop string may span
tokens too. Text that could still turn out to be the start of a stop string is held back until it is
known not to be, so a client never receives part of a stop string.
"""

from __future__ import annotations

import codecs

__all__ = ["TextStream"]


class TextStream:
    """Turns token bytes into text deltas and detects stop strings."""

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(data)
        if not self._stop:
            self._held = ""
            return text
        cut = -1
        for stop in self._stop:
            idx = text.find(stop)
            if idx != -1 and (cut == -1 or idx < cut):
                cut = idx
                self.matched = stop
        if cut != -1:
            self.stopped = True
            self._held = ""
            return text[:cut]
        hold = self._partial_stop_suffix(text)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The end of generation: return whatever was held back."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

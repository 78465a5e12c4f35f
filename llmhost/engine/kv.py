"""Sequence slots and prefix (KV) reuse.

Each slot is one llama.cpp sequence id. A free slot remembers which tokens its KV cells still hold, so a
new request that shares a prefix with them (same system prompt, a chat that continues) starts computing
after the shared part instead of from zero.

Which free slot a request takes also decides how fast every step runs: llama.cpp decodes one run of
consecutive slots per pass over the weights (:mod:`llmhost.engine.layout`), so a slot next to a busy
one is worth more than a few shared prompt tokens; a slot that bridges two busy runs, more still.

Reuse crosses callers, but the figure reported back (``cached_tokens``) does not: a slot also remembers,
per cache scope (the caller's API key), how much of its cached prefix that scope itself computed, and a
request is told only that part. Otherwise one key could learn, from its own usage figures, how much of a
guessed prompt another key had sent a moment before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SlotTable", "common_prefix_length"]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Length of the longest shared prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: prompts are long, and Python-level loops are the cost to watch.
    block = 64
    while i + block <= n and a[i : i + block] == b[i : i + block]:
        i += block
    while i < n and a[i] == b[i]:
        i += 1
    return i


# Scopes a slot remembers at most (the longest own prefixes are kept).
_MAX_SCOPES = 32

# What one more run of busy slots costs, in prompt tokens of reuse. Measured on two cores (Gemma 3 270M,
# bench/pass_probe.py): a pass costs ~16 ms a step (8 sequences: 51 ms in one pass, 164 ms in eight), a
# prefill token ~1.6 ms, so over a 128-token answer a new run costs the machine about what a
# 1,300-token prefix saves. But the prefix is also that request's own time to first token, so a cached
# prefix longer than this (a chat that goes on, a shared system prompt) still wins over adjacency; a
# few shared template tokens do not.
RUN_COST_TOKENS = 256


@dataclass(slots=True)
class _Slot:
    index: int
    busy: bool = False
    cached: list[int] = field(default_factory=list)  # tokens whose KV cells are resident
    last_used: int = 0
    # Per cache scope: how many of the leading ``cached`` tokens that scope's own requests computed.
    own: dict[str, int] = field(default_factory=dict)

    def truncate(self, n: int) -> None:
        del self.cached[n:]
        self.own = {scope: min(k, n) for scope, k in self.own.items() if min(k, n) > 0}


class SlotTable:
    """Hands out slots, preferring the free slot whose cached tokens share the longest prefix."""

    def __init__(self, n_slots: int, *, prefix_reuse: bool = True) -> None:
        self._slots = [_Slot(i) for i in range(n_slots)]
        self.prefix_reuse = prefix_reuse
        self._clock = 0

    @property
    def n_slots(self) -> int:
        return len(self._slots)

    @property
    def n_free(self) -> int:
        return sum(1 for slot in self._slots if not slot.busy)

    @property
    def free_cached_tokens(self) -> int:
        """Tokens whose KV cells the free slots keep for a later request to reuse."""
        return sum(len(slot.cached) for slot in self._slots if not slot.busy)

    def acquire(self, prompt: list[int], scope: str = "") -> tuple[int, int, int]:
        """Take a free slot for ``prompt``; return ``(slot, reusable_tokens, own_reusable_tokens)``,
        the last being the part of the reuse that ``scope`` itself had computed (what it may be told).

        At least one prompt token is always left to compute, because its logits are needed to sample.
        """
        free = [slot for slot in self._slots if not slot.busy]
        if not free:
            raise RuntimeError("no free slot")  # the scheduler checks n_free first
        best, best_len, best_score = free[0], -1, -(2**62)
        for slot in free:
            shared = common_prefix_length(slot.cached, prompt) if self.prefix_reuse else 0
            # Reuse, less the cost of a new run of busy slots (plus one for a slot that bridges two);
            # among equals, the least recently used slot.
            score = shared - RUN_COST_TOKENS * self._new_runs(slot.index)
            if score > best_score or (score == best_score and slot.last_used < best.last_used):
                best, best_len, best_score = slot, shared, score
        best.busy = True
        self._clock += 1
        best.last_used = self._clock
        reuse = max(min(best_len, len(prompt) - 1), 0) if self.prefix_reuse else 0
        best.truncate(reuse)
        return best.index, reuse, min(reuse, best.own.get(scope, 0))

    def _new_runs(self, index: int) -> int:
        """How many runs of busy slots taking ``index`` adds: 1 alone, 0 next to one, -1 between two."""
        left = index > 0 and self._slots[index - 1].busy
        right = index + 1 < len(self._slots) and self._slots[index + 1].busy
        return 1 - left - right

    def release(self, index: int, resident_tokens: list[int], scope: str = "") -> None:
        """Free a slot, remembering the tokens whose KV cells it still holds.

        All of them count as ``scope``'s own from now on: its request sent (or generated) every one, so
        telling it later that they are cached reveals nothing it did not know. What other scopes had
        computed stays theirs only up to the reuse point (``acquire`` already cut them there).
        """
        slot = self._slots[index]
        slot.busy = False
        slot.cached = list(resident_tokens) if self.prefix_reuse else []
        n = len(slot.cached)
        own = {s: min(k, n) for s, k in slot.own.items() if s != scope and min(k, n) > 0}
        if n:
            own[scope] = n
        if len(own) > _MAX_SCOPES:
            own = dict(sorted(own.items(), key=lambda item: item[1], reverse=True)[:_MAX_SCOPES])
        slot.own = own

    def forget(self, index: int) -> None:
        """The slot's KV cells were cleared: nothing in it can be reused."""
        slot = self._slots[index]
        slot.cached, slot.own = [], {}

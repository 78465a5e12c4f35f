"""What a model's step loop counts about its own work, for ``GET /metrics`` (:mod:`llmhost.metrics`).

The engine thread updates an :class:`EngineStats` at the events it already handles (a request takes a
slot, a step samples a token, a request finishes), under the engine's lock, so counting costs a few
integer additions per step and nothing at all while idle. A scrape copies it under the same lock.

Counters live as long as the engine (one load of one model file): a model that is unloaded and loaded
again starts from zero, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["TPOT_BUCKETS", "TTFT_BUCKETS", "EngineStats", "Histogram"]

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
"""Seconds from queueing to the first sampled token: long prompts on a CPU take tens of seconds."""

TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
"""Seconds per output token after the first (1/x is a stream's tokens per second: 1,000 down to 0.4)."""


class Histogram:
    """Per-bucket counts and a sum, Prometheus-style; the caller holds whatever lock guards it."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def copy(self) -> Histogram:
        twin = Histogram(self.bounds)
        twin.counts = list(self.counts)
        twin.total = self.total
        return twin

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs as the text exposition writes them, ``+Inf`` last."""
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return buckets


@dataclass(slots=True)
class EngineStats:
    """Token and latency counts of one engine.

    ``prefix_hit_tokens`` is the prompt tokens whose KV cells were reused from a slot's cache, whoever
    computed them (the figure that says how well the cache works); the ``cached_tokens`` a request is
    told in its usage counts only its own key's part (see :mod:`llmhost.engine.kv`).
    """

    prompt_tokens: int = 0
    prefix_hit_tokens: int = 0
    generation_tokens: int = 0
    steps: int = 0  # decode calls
    passes: int = 0  # llama.cpp micro-batches those calls were cut into (llmhost.engine.layout)
    draft_tokens: int = 0  # tokens drafted for speculative decoding (llmhost.engine.ngram)
    draft_accepted: int = 0  # of those, the ones the model agreed with
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    tpot: Histogram = field(default_factory=lambda: Histogram(TPOT_BUCKETS))

    def copy(self) -> EngineStats:
        return EngineStats(
            self.prompt_tokens,
            self.prefix_hit_tokens,
            self.generation_tokens,
            self.steps,
            self.passes,
            self.draft_tokens,
            self.draft_accepted,
            self.ttft.copy(),
            self.tpot.copy(),
        )

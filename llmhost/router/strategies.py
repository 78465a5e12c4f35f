"""Target ordering strategies: priority, cost, latency, round_robin, weighted."""

from __future__ import annotations

import collections
import itertools
import random
import statistics
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmhost.config import TargetSettings

__all__ = ["LatencyTracker", "Target", "order_targets"]


@dataclass(eq=False)
class Target:
    """A route target with its runtime state."""

    route: str
    index: int
    settings: TargetSettings
    latency: LatencyTracker = field(default_factory=lambda: LatencyTracker())

    @property
    def key(self) -> str:
        return f"{self.settings.provider}/{self.settings.model}"

    @property
    def price(self) -> float:
        return self.settings.input_price + self.settings.output_price


class LatencyTracker:
    """Recent request latencies (seconds) of one target."""

    def __init__(self, size: int = 64) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)

    def p50(self) -> float | None:
        with self._lock:
            return statistics.median(self._samples) if self._samples else None


_round_robin: dict[str, itertools.count[int]] = collections.defaultdict(itertools.count)


def order_targets(route: str, strategy: str, targets: Sequence[Target], rng: random.Random) -> list[Target]:
    """The order in which targets are tried for one request."""
    items = list(targets)
    if strategy == "priority" or len(items) < 2:
        return items
    if strategy == "cost":
        return sorted(items, key=lambda t: (t.price, t.index))
    if strategy == "latency":
        # Unmeasured targets go first so that every target gets measured.
        return sorted(items, key=lambda t: (p if (p := t.latency.p50()) is not None else -1.0, t.index))
    if strategy == "round_robin":
        start = next(_round_robin[route]) % len(items)
        return items[start:] + items[:start]
    if strategy == "weighted":
        ordered: list[Target] = []
        pool = items[:]
        while pool:
            pick = rng.choices(pool, weights=[t.settings.weight for t in pool])[0]
            ordered.append(pick)
            pool.remove(pick)
        return ordered
    raise ValueError(f"unknown strategy {strategy!r}")

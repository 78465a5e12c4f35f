"""Scorecards: how an agent, or a model, did over a time window, from its run records.

- success / error rate: runs that answered / that failed (refusals by a stage count as errors);
- latency p50 / p95 (ms, nearest rank), tokens and cost;
- policy compliance: the share of runs in which the governance policy found nothing to act on;
- tool calls: how many the runs made and how many worked (a call the caller runs counts as made);
- retrieval: the share of runs that retrieved from a dataset;
- feedback: thumbs up / down and ratings recorded through ``POST /v1/feedback``.
Rates are ``None`` when there is nothing to divide by.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from llmhost.apps.agents.store import AgentStore, Feedback, RunRecord

__all__ = ["percentile", "scorecard"]

_MAX_RUNS = 100_000


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def scorecard(
    store: AgentStore, *, agent: str | None = None, model: str | None = None, days: float = 7.0
) -> dict[str, Any]:
    store.flush(timeout=2.0)
    since = time.time() - days * 86400
    runs = store.runs(agent=agent, model=model, since=since, limit=_MAX_RUNS)
    feedback = store.feedback([r.id for r in runs])
    subject = {"agent": agent} if agent is not None else {"model": model}
    return {"object": "scorecard", "subject": subject, "window_days": days, **summarise(runs, feedback)}


def summarise(runs: Sequence[RunRecord], feedback: dict[str, list[Feedback]]) -> dict[str, Any]:
    n = len(runs)
    ok = sum(1 for r in runs if r.status == "ok")
    latencies = [r.latency_ms for r in runs]
    calls = [c for r in runs for c in r.tool_calls]
    worked = sum(1 for c in calls if c.get("ok"))
    compliant = sum(1 for r in runs if not r.policy)
    retrieving = sum(1 for r in runs if r.retrieved)
    given = [f for items in feedback.values() for f in items]
    ratings = [f.rating for f in given if f.rating is not None]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    return {
        "requests": n,
        "success_rate": _rate(ok, n),
        "error_rate": _rate(n - ok, n),
        "latency_ms": {
            "p50": round(p50, 3) if p50 is not None else None,
            "p95": round(p95, 3) if p95 is not None else None,
        },
        "tokens": {
            "prompt": sum(r.prompt_tokens for r in runs),
            "completion": sum(r.completion_tokens for r in runs),
        },
        "cost": round(sum(r.cost for r in runs), 8),
        "policy_compliance": _rate(compliant, n),
        "tool_calls": {"total": len(calls), "succeeded": worked, "success_rate": _rate(worked, len(calls))},
        "retrieval": {"runs_with_retrieval": retrieving, "rate": _rate(retrieving, n)},
        "feedback": {
            "up": sum(1 for f in given if f.thumbs == "up"),
            "down": sum(1 for f in given if f.thumbs == "down"),
            "ratings": len(ratings),
            "mean_rating": round(sum(ratings) / len(ratings), 3) if ratings else None,
        },
    }

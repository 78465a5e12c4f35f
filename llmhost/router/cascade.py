"""Cascade checks: does an answer pass, or should the route escalate to its next target?"""

from __future__ import annotations

import json
from collections.abc import Sequence

from llmhost.core.types import InferenceRequest, Result

__all__ = ["cascade_check_fails", "mean_logprob"]


def mean_logprob(result: Result) -> float | None:
    """Mean log-probability of the first choice's tokens, or None without them."""
    logprobs = result.choices[0].logprobs if result.choices else None
    if not logprobs:
        return None
    return sum(item.logprob for item in logprobs) / len(logprobs)


def cascade_check_fails(
    checks: Sequence[str], request: InferenceRequest, result: Result, min_logprob: float = -1.0
) -> str | None:
    """Name of the first failing check, or None when the answer is acceptable."""
    text = result.text
    for check in checks:
        if check == "nonempty" and not text.strip() and not (result.choices and result.choices[0].tool_calls):
            return "empty answer"
        if check == "logprob":
            mean = mean_logprob(result)
            if mean is None:
                return "no token log-probabilities to judge the answer by"
            if mean < min_logprob:
                return f"mean token log-probability {mean:.3f} is below {min_logprob}"
        if check == "json" and request.response_format.type != "text":
            try:
                value = json.loads(text)
            except ValueError:
                return "answer is not valid JSON"
            schema = request.response_format.schema or {}
            missing = [k for k in schema.get("required", []) if not isinstance(value, dict) or k not in value]
            if missing:
                return f"answer lacks required keys {missing}"
    return None

"""The numpy fast paths of the sampler: which requests take them, and that the draw is the softmax."""

from __future__ import annotations

import numpy as np
import pytest

from llmhost.engine.sampling import TemperatureDraw, fast_path
from llmhost.engine.types import SamplingParams


@pytest.mark.parametrize(
    ("params", "path"),
    [
        (SamplingParams(temperature=0.0), "greedy"),
        (SamplingParams(temperature=1.0), "draw"),
        (SamplingParams(temperature=0.7, seed=3), "draw"),
        (SamplingParams(temperature=0.7, top_k=40), None),
        (SamplingParams(temperature=0.7, top_p=0.9), None),
        (SamplingParams(temperature=0.7, min_p=0.05), None),
        (SamplingParams(temperature=0.0, logit_bias={5: 10.0}), None),
        (SamplingParams(temperature=0.0, repeat_penalty=1.1), None),
        (SamplingParams(temperature=1.0, presence_penalty=0.5), None),
        (SamplingParams(temperature=0.0, grammar='root ::= "a"'), None),
    ],
)
def test_fast_path_only_for_plain_requests(params: SamplingParams, path: str | None) -> None:
    assert fast_path(params) == path


def test_draw_follows_the_softmax_at_the_temperature() -> None:
    n_vocab = 1000  # not a multiple of the block size
    logits = np.full(n_vocab, -50.0, dtype=np.float32)
    logits[[3, 700, 999]] = np.log([0.5, 0.3, 0.2]).astype(np.float32)
    draw = TemperatureDraw(n_vocab, 1.0, seed=7)
    counts = np.bincount([draw(logits) for _ in range(20000)], minlength=n_vocab)
    assert counts.sum() == 20000 and set(np.flatnonzero(counts)) <= {3, 700, 999}
    assert counts[[3, 700, 999]] / 20000 == pytest.approx([0.5, 0.3, 0.2], abs=0.015)
    # Temperature 0.5 squares the odds: 25:9:4.
    hot = TemperatureDraw(n_vocab, 0.5, seed=7)
    counts = np.bincount([hot(logits) for _ in range(20000)], minlength=n_vocab)
    assert counts[[3, 700, 999]] / 20000 == pytest.approx(np.array([25, 9, 4]) / 38, abs=0.015)


def test_same_seed_same_tokens() -> None:
    logits = np.random.default_rng(0).standard_normal(70000).astype(np.float32)
    a, b = TemperatureDraw(70000, 0.9, seed=42), TemperatureDraw(70000, 0.9, seed=42)
    assert [a(logits) for _ in range(50)] == [b(logits) for _ in range(50)]
    c = TemperatureDraw(70000, 0.9, seed=43)
    assert [a(logits) for _ in range(50)] != [c(logits) for _ in range(50)]


def test_draw_leaves_the_logits_alone() -> None:
    logits = np.linspace(-5, 5, 2048, dtype=np.float32)
    before = logits.copy()
    TemperatureDraw(2048, 0.8, seed=1)(logits)
    assert np.array_equal(logits, before)

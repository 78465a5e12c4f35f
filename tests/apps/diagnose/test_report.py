"""The diagnose quality report (llmhost.apps.diagnose.report): calibration error and reliability bins,
Cohen's kappa between raters, the report over a fixed feedback set (every number computed by hand
below), the reliability diagram PNG and the CLI text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmhost.apps.diagnose.report import (
    Bin,
    Outcome,
    build_report,
    cohens_kappa,
    expected_calibration_error,
    format_report,
    rater_agreement,
    reliability_bins,
    reliability_diagram,
)

# --- expected calibration error -------------------------------------------------------------------


def test_ece_of_a_perfectly_calibrated_set_is_zero() -> None:
    # bin 2: four at 0.25, one right (acc 0.25); bin 7: four at 0.75, three right (acc 0.75);
    # bin 9: two at 1.0, both right; bin 0: two at 0.0, both wrong. Every gap is 0.
    confidences = [0.25] * 4 + [0.75] * 4 + [1.0] * 2 + [0.0] * 2
    correct = [True, False, False, False, True, True, True, False, True, True, False, False]
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_overconfidence() -> None:
    # ten at 0.9, five right: one bin, |0.5 - 0.9| = 0.4
    assert expected_calibration_error([0.9] * 10, [True, False] * 5) == pytest.approx(0.4)


def test_ece_two_bins_by_hand() -> None:
    # bins=2: [0, 0.5) holds 0.2 (wrong) and 0.4 (right): conf 0.3, acc 0.5, gap 0.2, weight 2/4 -> 0.10
    #         [0.5, 1] holds 0.6 and 0.8 (both right): conf 0.7, acc 1.0, gap 0.3, weight 2/4 -> 0.15
    # ECE = 0.10 + 0.15 = 0.25
    ece = expected_calibration_error([0.2, 0.4, 0.6, 0.8], [False, True, True, True], bins=2)
    assert ece == pytest.approx(0.25)


def test_ece_empty_and_bad_input() -> None:
    assert expected_calibration_error([], []) == 0.0
    with pytest.raises(ValueError):
        expected_calibration_error([0.5], [])
    with pytest.raises(ValueError):
        expected_calibration_error([1.5], [True])


def test_bins_count_everything_and_one_goes_last() -> None:
    confidences = [0.0, 0.05, 0.1, 0.5, 0.55, 0.99, 1.0, 1.0]
    correct = [False, False, True, True, False, True, True, False]
    bins = reliability_bins(confidences, correct)
    assert len(bins) == 10
    assert sum(b.count for b in bins) == len(confidences)
    assert [b.count for b in bins] == [2, 1, 0, 0, 0, 2, 0, 0, 0, 3]
    # the last bin: 0.99 (right), 1.0 (right), 1.0 (wrong): conf 2.99 / 3, acc 2 / 3
    last = bins[-1]
    assert last.lower == pytest.approx(0.9) and last.upper == pytest.approx(1.0)
    assert last.mean_confidence == pytest.approx(2.99 / 3)
    assert last.accuracy == pytest.approx(2 / 3)
    assert bins[2] == Bin(lower=0.2, upper=0.3, count=0, mean_confidence=0.0, accuracy=0.0)
    # bins=2: 0.5 opens the upper bin, 1.0 closes it
    assert [b.count for b in reliability_bins([0.49, 0.5, 1.0], [True] * 3, bins=2)] == [1, 2]


# --- Cohen's kappa --------------------------------------------------------------------------------


def test_kappa_textbook() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15.
    # p_o = 35/50 = 0.7; A says yes 25/50, B 30/50: p_e = 0.5*0.6 + 0.5*0.4 = 0.5
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    pairs = [(True, True)] * 20 + [(True, False)] * 5 + [(False, True)] * 10 + [(False, False)] * 15
    assert cohens_kappa(pairs) == pytest.approx(0.4)


def test_kappa_edges() -> None:
    assert cohens_kappa([]) is None
    assert cohens_kappa([(1, 1), (2, 2), (5, 5)]) == 1.0
    # both always say 3: p_o = p_e = 1, still full agreement
    assert cohens_kappa([(3, 3)] * 4) == 1.0
    # 50 items: 10/15/15/10 -> p_o = 20/50 = 0.4, p_e = 0.5*0.5 + 0.5*0.5 = 0.5, kappa = -0.1/0.5 = -0.2
    worse = [("y", "y")] * 10 + [("y", "n")] * 15 + [("n", "y")] * 15 + [("n", "n")] * 10
    assert cohens_kappa(worse) == pytest.approx(-0.2)
    # always opposite: p_o = 0, p_e = 0.5 -> -1
    assert cohens_kappa([(1, 2), (2, 1)]) == pytest.approx(-1.0)


# --- the report over a fixed feedback set ---------------------------------------------------------


def o(
    diagnosis: str,
    suggestion: str,
    category: str,
    confidence: float,
    latency: float,
    applied: bool | None = None,
    worked: bool | None = None,
    rating: int | None = None,
    rater: str | None = None,
) -> Outcome:
    return Outcome(diagnosis, suggestion, category, confidence, latency, applied, worked, rating, rater)


# 4 diagnoses (latency 1, 2, 3, 10 s), 7 suggestions, 3 categories, raters alice and bob; 12 outcomes.
OUTCOMES = [
    o("d1", "s1", "error", 0.9, 1.0, True, True, 5, "alice"),
    o("d1", "s1", "error", 0.9, 1.0, True, True, 4, "bob"),
    o("d1", "s2", "error", 0.3, 1.0, True, False, 2, "alice"),
    o("d1", "s2", "error", 0.3, 1.0, True, False, 2, "bob"),
    o("d2", "s3", "performance", 0.8, 2.0, True, True, 4, "alice"),
    o("d2", "s3", "performance", 0.8, 2.0, True, False, 3, "bob"),  # a tie on worked: counts False
    o("d2", "s4", "performance", 0.6, 2.0, True, True, 4, "alice"),
    o("d2", "s4", "performance", 0.6, 2.0, True, True, 4, "bob"),
    o("d3", "s5", "stall", 0.7, 3.0, False, None, 3, "alice"),  # not applied: result unknown
    o("d3", "s5", "stall", 0.7, 3.0, False, None, 3, "bob"),
    o("d3", "s6", "stall", 0.2, 3.0),  # no feedback at all
    o("d4", "s7", "error", 0.95, 10.0, True, True, 5, "alice"),  # only alice
]


def test_build_report_by_hand() -> None:
    r = build_report(OUTCOMES)
    assert (r.diagnoses, r.suggestions) == (4, 7)
    # feedback on s1..s5 and s7: 6 of 7
    assert r.coverage == pytest.approx(6 / 7)
    # result known for s1 (T), s2 (F), s3 (tie -> F), s4 (T), s7 (T): 3 of 5
    assert r.success_rate == pytest.approx(0.6)

    assert list(r.by_category) == ["error", "performance", "stall"]
    error, perf, stall = r.by_category["error"], r.by_category["performance"], r.by_category["stall"]
    # error: s1, s2, s7, all with feedback; worked s1, s7 of 3; confidence (0.9 + 0.3 + 0.95) / 3
    assert (error.suggestions, error.with_feedback) == (3, 3)
    assert error.success_rate == pytest.approx(2 / 3)
    assert error.mean_confidence == pytest.approx(2.15 / 3)
    # performance: s3 (F), s4 (T): 1 of 2; confidence (0.8 + 0.6) / 2
    assert (perf.suggestions, perf.with_feedback) == (2, 2)
    assert perf.success_rate == pytest.approx(0.5)
    assert perf.mean_confidence == pytest.approx(0.7)
    # stall: s5 (feedback, no result), s6 (nothing); confidence (0.7 + 0.2) / 2
    assert (stall.suggestions, stall.with_feedback) == (2, 1)
    assert stall.success_rate is None
    assert stall.mean_confidence == pytest.approx(0.45)

    # ECE over the 5 judged suggestions (N = 5):
    #   bin 9: 0.9 (T), 0.95 (T): conf 0.925, acc 1 -> 2/5 * 0.075 = 0.03
    #   bin 8: 0.8 (F):           conf 0.8,   acc 0 -> 1/5 * 0.8   = 0.16
    #   bin 6: 0.6 (T):           conf 0.6,   acc 1 -> 1/5 * 0.4   = 0.08
    #   bin 3: 0.3 (F):           conf 0.3,   acc 0 -> 1/5 * 0.3   = 0.06
    #   ECE = 0.33
    assert r.ece == pytest.approx(0.33)
    assert [b.count for b in r.bins] == [0, 0, 0, 1, 0, 0, 1, 0, 1, 2]
    assert r.bins[9].mean_confidence == pytest.approx(0.925)

    # latencies [1, 2, 3, 10], one per diagnosis; linear percentile at rank q/100 * 3:
    #   p50: rank 1.5  -> 2 + 0.5 * (3 - 2)   = 2.5
    #   p95: rank 2.85 -> 3 + 0.85 * (10 - 3) = 8.95
    #   p99: rank 2.97 -> 3 + 0.97 * (10 - 3) = 9.79
    assert r.latency_p50 == pytest.approx(2.5)
    assert r.latency_p95 == pytest.approx(8.95)
    assert r.latency_p99 == pytest.approx(9.79)

    # ratings both gave: s1 (5, 4), s2 (2, 2), s3 (4, 3), s4 (4, 4), s5 (3, 3); n = 5
    #   p_o = 3/5 = 0.6
    #   alice {5: 1, 2: 1, 4: 2, 3: 1}, bob {4: 2, 2: 1, 3: 2}: p_e = (1*1 + 2*2 + 1*2) / 25 = 0.28
    #   kappa = (0.6 - 0.28) / (1 - 0.28) = 0.32 / 0.72 = 4/9
    assert r.kappa == {"alice~bob": pytest.approx(4 / 9)}


def test_build_report_as_dict_is_json() -> None:
    d = build_report(OUTCOMES).as_dict()
    again = json.loads(json.dumps(d))
    assert again["coverage"] == 0.8571  # 6/7 rounded
    assert again["by_category"]["error"]["mean_confidence"] == 0.7167  # 2.15/3 rounded
    assert again["by_category"]["stall"]["success_rate"] is None
    assert again["kappa"] == {"alice~bob": 0.4444}
    assert again["ece"] == 0.33
    assert again["latency_p99"] == 9.79
    assert len(again["bins"]) == 10 and again["bins"][9]["count"] == 2


def test_build_report_empty() -> None:
    r = build_report([])
    assert (r.diagnoses, r.suggestions, r.coverage, r.success_rate, r.ece) == (0, 0, 0.0, None, 0.0)
    assert r.latency_p50 is None and r.latency_p95 is None and r.latency_p99 is None
    assert r.by_category == {} and r.kappa == {}
    assert sum(b.count for b in r.bins) == 0


def test_rater_agreement_pairs() -> None:
    extra = [o("d5", "s8", "timeout", 0.5, 1.0, True, True, 2, "carol")]  # carol shares nothing
    agreement = rater_agreement([*OUTCOMES, *extra])
    assert list(agreement) == [("alice", "bob")]
    assert agreement[("alice", "bob")] == pytest.approx(4 / 9)


# --- the diagram and the text ---------------------------------------------------------------------


def test_reliability_diagram_writes_png(tmp_path: Path) -> None:
    report = build_report(OUTCOMES)
    out = reliability_diagram(report, tmp_path / "figs" / "reliability.png")
    assert out == tmp_path / "figs" / "reliability.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
    from_bins = reliability_diagram(report.bins, tmp_path / "bins.png")
    assert from_bins.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_report_names_categories_and_ece() -> None:
    text = format_report(build_report(OUTCOMES))
    for name in ("error", "performance", "stall"):
        assert name in text
    assert "ECE 0.3300" in text
    assert "alice~bob" in text

"""The diagnose engine's quality report, computed from recorded feedback on its suggestions.

Each :class:`Outcome` is one piece of feedback (one rater on one suggestion of one diagnosis); a
suggestion nobody has rated yet appears once, with ``rater=None``. :func:`build_report` folds them into
one entry per suggestion and per diagnosis, and reports:

* ``coverage``: the share of suggestions with any feedback (some outcome with ``applied`` not None).
* ``success_rate``: of the suggestions whose result is known (some ``worked`` not None), the share that
  worked. When raters disagree on ``worked``, the majority counts, and a tie counts as not working.
* ``by_category``: the same per diagnostic category, with the mean stated confidence of its suggestions.
* ``ece`` (expected calibration error) and ``bins`` (the reliability bins): is the model's stated
  confidence a probability of success? Suggestions with a known result are grouped into equal-width
  confidence bins over [0, 1]; in each bin the accuracy (share that worked) is compared with the mean
  confidence, and the ECE is the count-weighted mean gap: ``sum(n_bin / N * |acc_bin - conf_bin|)``.
  0 is perfect calibration; a model that says 0.9 and is right half the time scores 0.4.
* ``latency_p50`` / ``p95`` / ``p99``: percentiles (linear interpolation) of the time a diagnosis took,
  one value per distinct diagnosis.
* ``kappa``: Cohen's kappa of the 1..5 ratings for every pair of raters, over the suggestions both
  rated, keyed ``"alice~bob"``: 1 is full agreement, 0 the agreement expected by chance, below 0 worse.

:func:`reliability_diagram` draws the reliability bins as a PNG: one bar per bin at the accuracy of its
suggestions, the diagonal of perfect calibration (bars below it: overconfident, above: underconfident),
the count of each bin over its bar, and the ECE in the title. :func:`format_report` is the CLI's text.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Bin",
    "CategoryStats",
    "Outcome",
    "Report",
    "build_report",
    "cohens_kappa",
    "expected_calibration_error",
    "format_report",
    "rater_agreement",
    "reliability_bins",
    "reliability_diagram",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    diagnosis_id: str
    suggestion_id: str  # one suggestion of that diagnosis
    category: str  # the diagnostic category, e.g. "error", "performance", "stall", ...
    confidence: float  # the model's stated confidence, 0..1
    latency_s: float  # how long that diagnosis took
    applied: bool | None  # feedback: was the suggestion applied (None: no feedback yet)
    worked: bool | None  # feedback: did it fix the problem (None: unknown / not applied)
    rating: int | None  # feedback: 1..5
    rater: str | None  # who gave the feedback


@dataclass(frozen=True, slots=True)
class Bin:
    """One equal-width confidence bin, ``[lower, upper)`` (the last one also holds 1.0)."""

    lower: float
    upper: float
    count: int
    mean_confidence: float  # 0.0 when empty
    accuracy: float  # 0.0 when empty


@dataclass(frozen=True, slots=True)
class CategoryStats:
    suggestions: int
    with_feedback: int
    success_rate: float | None  # None when no suggestion of the category has a known result
    mean_confidence: float


@dataclass(frozen=True, slots=True)
class Report:
    diagnoses: int
    suggestions: int
    coverage: float
    success_rate: float | None
    by_category: dict[str, CategoryStats]
    ece: float
    bins: list[Bin]
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    kappa: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict, floats rounded to 4 digits."""
        rounded: dict[str, Any] = _rounded(asdict(self))
        return rounded


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _bin_members(
    confidences: Sequence[float], correct: Sequence[bool], bins: int
) -> list[tuple[list[float], list[bool]]]:
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} correctness values")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, not {bins}")
    members: list[tuple[list[float], list[bool]]] = [([], []) for _ in range(bins)]
    for confidence, ok in zip(confidences, correct, strict=True):
        c = float(confidence)
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"confidence {c} is outside [0, 1]")
        index = min(int(c * bins), bins - 1)  # 1.0 goes in the last bin
        members[index][0].append(c)
        members[index][1].append(bool(ok))
    return members


def reliability_bins(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> list[Bin]:
    """Equal-width bins over [0, 1] with their counts, mean confidences and accuracies (empty: 0.0)."""
    result = []
    for i, (confs, oks) in enumerate(_bin_members(confidences, correct, bins)):
        n = len(confs)
        result.append(
            Bin(
                lower=i / bins,
                upper=(i + 1) / bins,
                count=n,
                mean_confidence=sum(confs) / n if n else 0.0,
                accuracy=sum(oks) / n if n else 0.0,
            )
        )
    return result


def _ece_of_bins(bins: Sequence[Bin]) -> float:
    total = sum(b.count for b in bins)
    if total == 0:
        return 0.0
    return sum(b.count / total * abs(b.accuracy - b.mean_confidence) for b in bins)


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float:
    """``sum(n_bin / N * |acc_bin - conf_bin|)`` over equal-width bins; 0.0 for no input."""
    return _ece_of_bins(reliability_bins(confidences, correct, bins))


def cohens_kappa(pairs: Iterable[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa of two raters over the items both rated, ``(label_a, label_b)`` each.

    None without pairs; 1.0 when the raters always agree, even if chance agreement is 1 as well.
    """
    items = list(pairs)
    n = len(items)
    if n == 0:
        return None
    agreed = sum(1 for a, b in items if a == b)
    counts_a = Counter(a for a, _ in items)
    counts_b = Counter(b for _, b in items)
    chance = sum(count * counts_b[label] for label, count in counts_a.items())  # p_e * n^2, exact
    if agreed == n:
        return 1.0
    # (p_o - p_e) / (1 - p_e) with p_o = agreed / n and p_e = chance / n^2; chance < n^2 here.
    return (agreed * n - chance) / (n * n - chance)


def rater_agreement(outcomes: Iterable[Outcome]) -> dict[tuple[str, str], float]:
    """Kappa on ``rating`` for every pair of raters (sorted names) over the suggestions both rated."""
    ratings: dict[str, dict[str, int]] = {}
    for o in outcomes:
        if o.rater is not None and o.rating is not None:
            ratings.setdefault(o.rater, {})[o.suggestion_id] = o.rating
    result: dict[tuple[str, str], float] = {}
    for a, b in itertools.combinations(sorted(ratings), 2):
        common = sorted(ratings[a].keys() & ratings[b].keys())
        kappa = cohens_kappa((ratings[a][s], ratings[b][s]) for s in common)
        if kappa is not None:
            result[(a, b)] = kappa
    return result


@dataclass(slots=True)
class _Suggestion:
    category: str
    confidence: float
    applied: bool = False  # some feedback at all
    worked_yes: int = 0
    worked_no: int = 0

    @property
    def known(self) -> bool:
        return self.worked_yes + self.worked_no > 0

    @property
    def worked(self) -> bool:
        return self.worked_yes > self.worked_no  # majority; a tie counts as not working


def build_report(outcomes: Iterable[Outcome], bins: int = 10) -> Report:
    """The quality report of the recorded feedback (see the module docstring for each number)."""
    items = list(outcomes)
    suggestions: dict[str, _Suggestion] = {}
    latencies: dict[str, float] = {}
    for o in items:
        latencies.setdefault(o.diagnosis_id, float(o.latency_s))
        s = suggestions.setdefault(o.suggestion_id, _Suggestion(o.category, float(o.confidence)))
        s.applied = s.applied or o.applied is not None
        if o.worked is not None:
            if o.worked:
                s.worked_yes += 1
            else:
                s.worked_no += 1

    known = [s for s in suggestions.values() if s.known]
    confidences = [s.confidence for s in known]
    correct = [s.worked for s in known]
    reliability = reliability_bins(confidences, correct, bins)

    by_category: dict[str, CategoryStats] = {}
    for name in sorted({s.category for s in suggestions.values()}):
        members = [s for s in suggestions.values() if s.category == name]
        judged = [s for s in members if s.known]
        by_category[name] = CategoryStats(
            suggestions=len(members),
            with_feedback=sum(1 for s in members if s.applied),
            success_rate=sum(s.worked for s in judged) / len(judged) if judged else None,
            mean_confidence=sum(s.confidence for s in members) / len(members),
        )

    p50 = p95 = p99 = None
    if latencies:
        p50, p95, p99 = (float(p) for p in np.percentile(list(latencies.values()), [50, 95, 99]))

    return Report(
        diagnoses=len(latencies),
        suggestions=len(suggestions),
        coverage=sum(1 for s in suggestions.values() if s.applied) / len(suggestions) if suggestions else 0.0,
        success_rate=sum(correct) / len(correct) if correct else None,
        by_category=by_category,
        ece=_ece_of_bins(reliability),
        bins=reliability,
        latency_p50=p50,
        latency_p95=p95,
        latency_p99=p99,
        kappa={f"{a}~{b}": k for (a, b), k in rater_agreement(items).items()},
    )


def reliability_diagram(report_or_bins: Report | Sequence[Bin], path: Path) -> Path:
    """Write the reliability diagram of a report (or of bins) as a PNG at ``path``; returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(report_or_bins, Report):
        bins, ece = report_or_bins.bins, report_or_bins.ece
    else:
        bins, ece = list(report_or_bins), _ece_of_bins(report_or_bins)
    fig = Figure(figsize=(5.5, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="grey", label="perfect calibration")
    ax.bar(
        [b.lower for b in bins],
        [b.accuracy for b in bins],
        width=[b.upper - b.lower for b in bins],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        alpha=0.8,
        label="accuracy (share that worked)",
    )
    for b in (b for b in bins if b.count):
        centre = ((b.lower + b.upper) / 2, b.accuracy)
        ax.annotate(
            f"n={b.count}", centre, xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8
        )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.08)
    ax.set_xlabel("stated confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability of diagnose suggestions (ECE {ece:.4f})")
    ax.legend(loc="upper left", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def format_report(report: Report) -> str:
    """A plain-text summary for the CLI: totals, calibration, latency, a table of categories, kappa."""
    lines = [
        f"diagnoses {report.diagnoses}  suggestions {report.suggestions}  "
        f"coverage {_pct(report.coverage)}  success {_pct(report.success_rate)}",
        f"calibration: ECE {report.ece:.4f} over {sum(b.count for b in report.bins)} judged suggestions",
        f"latency: p50 {_secs(report.latency_p50)}  p95 {_secs(report.latency_p95)}  "
        f"p99 {_secs(report.latency_p99)}",
        "",
        f"{'category':<16}{'suggestions':>12}{'feedback':>10}{'success':>10}{'confidence':>12}",
    ]
    for name, stats in report.by_category.items():
        lines.append(
            f"{name:<16}{stats.suggestions:>12}{stats.with_feedback:>10}"
            f"{_pct(stats.success_rate):>10}{stats.mean_confidence:>12.2f}"
        )
    if report.kappa:
        lines.append("")
        lines.append("rater agreement (kappa): " + "  ".join(f"{k} {v:.3f}" for k, v in report.kappa.items()))
    return "\n".join(lines)

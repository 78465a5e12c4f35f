"""What the governance policy recognises: PII and secrets, each a regex plus the check that keeps false
positives down, and the tail pattern that tells a stream what may still grow into a match.

    rule      what it finds                                   check after the regex
    card      13-19 digits, in groups of spaces or dashes    Luhn checksum
    iban      2 letters, 2 digits, 11-30 letters/digits       ISO 13616 mod-97 == 1
    api_key   sk-..., llmh_..., ghp_/gho_/ghu_/ghs_/ghr_...,  length (each prefix's own minimum)
              github_pat_..., AKIA/ASIA..., xox?-...
    jwt       eyJ....eyJ....sig (three base64url parts)      -
    bearer    the token after "Bearer " (16+ characters)      -
    email     local@domain.tld                                -
    phone     +country..., (415) 555-0100, 020 7946 0958      digit count (8-15 / 10 / 9-11)

Bare digit runs are not taken for phone numbers (order ids, timestamps and amounts would be); a failed
check on a card or an IBAN retries the match cut at each earlier separator, so ``GB82 WEST 1234 5698
7654 32 is mine`` still finds the IBAN although the regex first took ``... 32 IS``-style tails.

Every pattern may start right after a JSON or C escape (``\\n``, ``\\t`` ...): tool-call arguments are JSON
text, and ``"\\nalice@example.com"`` must not hide the address behind the ``n``.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llmhost.engine.types import TokenLogprob

__all__ = [
    "DETECTORS",
    "GROUPS",
    "RULES",
    "Detector",
    "Hit",
    "candidate_start",
    "find_hits",
    "iban_valid",
    "logprobs_kept",
    "luhn_valid",
    "marker",
    "may_match",
    "original_offset",
    "redact_json",
    "redact_text",
    "render",
    "token_ends",
]

# Priority order: on overlapping matches of equal start and length, the earlier rule wins.
RULES = ("card", "iban", "api_key", "jwt", "bearer", "email", "phone")
GROUPS: dict[str, tuple[str, ...]] = {
    "pii": ("email", "phone", "card", "iban"),
    "secrets": ("api_key", "jwt", "bearer"),
    "all": RULES,
}


def marker(rule: str) -> str:
    """What a match is replaced with (no quotes or backslashes: safe inside a JSON string)."""
    return f"[REDACTED:{rule}]"


def luhn_valid(text: str) -> bool:
    """The Luhn checksum of the digits in ``text`` (card numbers), 13 to 19 digits."""
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, the number mod 97 is 1."""
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _digits_between(low: int, high: int) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        return low <= sum(c.isdigit() for c in text) <= high

    return check


_DATE = re.compile(r"\d{1,2}[./\-]\d{1,2}[./\-]\d{2,4}")  # 05.10.2023 12:30 is no phone number


def _national_valid(text: str) -> bool:
    return 9 <= sum(c.isdigit() for c in text) <= 11 and _DATE.match(text) is None


@dataclass(frozen=True, slots=True)
class Detector:
    """One rule's pattern. ``valid`` checks a regex match (None: every match counts); ``shrink`` retries a
    failed match cut at each earlier separator; ``grows`` matches the characters that may extend a match
    already found (open-ended secrets), which a stream swallows after it has sent the marker."""

    rule: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool] | None = None
    shrink: bool = False
    grows: re.Pattern[str] | None = None
    label: str = ""  # the replacement; marker(rule) when empty
    needs: tuple[str, ...] = ()  # text without any of these cannot match: skip the regex (it is cheaper)

    @property
    def replacement(self) -> str:
        return self.label or marker(self.rule)


@dataclass(frozen=True, slots=True)
class Hit:
    start: int
    end: int
    detector: Detector

    @property
    def rule(self) -> str:
        return self.detector.rule


_ESCAPES = "nrtbf"


def _start(chars: str) -> str:
    """Not inside a longer run of ``chars``. After a backslash, not on an escape letter: in
    ``"\\nalice@example.com"`` (JSON text) the match starts after the ``\\n``."""
    return rf"(?:(?<![{chars}\\])|(?<=\\)(?![{_ESCAPES}])|(?<=\\[{_ESCAPES}]))"


_KEY_CHARS = r"A-Za-z0-9_\-"
_LOCAL = r"A-Za-z0-9_.%+\-"  # an email's local part
_GROWS_KEY = re.compile(rf"[{_KEY_CHARS}]*")
_SEP = r"[ .\-]"

DETECTORS: tuple[Detector, ...] = (
    Detector("card", re.compile(r"(?<!\d)\d(?:[ \-]?\d){12,18}(?!\d)"), luhn_valid, shrink=True),
    Detector(
        "iban",
        re.compile(_start("A-Za-z0-9") + r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])"),
        iban_valid,
        shrink=True,
    ),
    Detector(
        "api_key",
        re.compile(
            _start(_KEY_CHARS) + r"(?:sk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"
            r"|llmh_[A-Za-z0-9_\-]{20,}"
            r"|gh[pousr]_[A-Za-z0-9]{30,}"
            r"|github_pat_[A-Za-z0-9_]{40,}"
            r"|(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"
            r"|xox[abposr]-[A-Za-z0-9\-]{10,})"
        ),
        grows=_GROWS_KEY,
        needs=("sk-", "llmh_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "AKIA", "ASIA", "xox"),
    ),
    Detector(
        "jwt",
        re.compile(_start(_KEY_CHARS + ".") + r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"),
        grows=_GROWS_KEY,
        needs=("eyJ",),
    ),
    Detector(
        "bearer",
        re.compile(r"(?:(?<=Bearer )|(?<=bearer ))[A-Za-z0-9._~+/\-]{16,}=*"),
        grows=re.compile(r"[A-Za-z0-9._~+/=\-]*"),
        needs=("earer ",),
    ),
    Detector(
        "email",
        re.compile(_start(_LOCAL) + rf"[{_LOCAL}]+@(?:[A-Za-z0-9\-]+\.)+[A-Za-z]{{2,24}}(?![A-Za-z0-9\-])"),
        grows=re.compile(r"[A-Za-z0-9.\-]*"),
        needs=("@",),
    ),
    # International: a + and 8-15 digits in any grouping.
    Detector(
        "phone",
        re.compile(_start(r"\w+") + rf"\+\d{{1,3}}(?:{_SEP}?\(?\d{{1,4}}\)?){{2,6}}(?![\w])"),
        _digits_between(8, 15),
        needs=("+",),
    ),
    # North American: (415) 555-0100, 415-555-0100, 415.555.0100, 415 555 0100.
    Detector(
        "phone",
        re.compile(_start(r"\w+(") + rf"(?:\(\d{{3}}\) ?|\d{{3}}{_SEP})\d{{3}}{_SEP}\d{{4}}(?![\w])"),
    ),
    # National numbers with a trunk 0: 020 7946 0958, 01 23 45 67 89, 030-1234567.
    Detector(
        "phone",
        re.compile(_start(r"\w+") + rf"0\d{{1,4}}(?:{_SEP}\d{{2,8}}){{1,4}}(?![\w])"),
        _national_valid,
        needs=("0",),
    ),
)

# What may still grow into a match at the end of streamed text; re.search finds the leftmost start.
# Each alternative covers the prefixes of some rules' matches: the trailing word (emails, keys, tokens,
# IBANs without spaces), a trailing number with its separators (cards, phones), an IBAN in groups of
# four, and "Bearer " with the start of its token.
_TAIL = re.compile(
    r"[A-Za-z0-9_.%+\-]+(?:@[A-Za-z0-9.\-]*)?$"
    r"|[+(]?\d[\d ().\-]*$|[+(]$"
    r"|[A-Z]{2}\d{2}[ A-Z0-9]*$"
    r"|[Bb]earer(?: [A-Za-z0-9._~+/=\-]*)?$"
)


def candidate_start(text: str, pos: int, window: int) -> int:
    """Where, at or after ``pos``, the tail of ``text`` that may still become a match begins (looking at
    most ``window`` characters back); ``len(text)`` when none may."""
    found = _TAIL.search(text, max(pos, len(text) - window))
    return found.start() if found is not None else len(text)


def _hits_of(detector: Detector, text: str, pos: int) -> Iterable[Hit]:
    if detector.needs and not any(n in text for n in detector.needs):
        return
    at = pos
    while (m := detector.pattern.search(text, at)) is not None:
        start, end = m.start(), m.end()
        if end == start:  # a pattern that can match nothing: never a hit, move on
            at = start + 1
            continue
        found = _checked_end(detector, text[start:end])
        if found is None:
            at = start + 1
            continue
        yield Hit(start, start + found, detector)
        at = start + found


def _checked_end(detector: Detector, matched: str) -> int | None:
    """The length of the valid match, possibly cut at a separator; None when no cut passes."""
    if detector.valid is None or detector.valid(matched):
        return len(matched)
    if detector.shrink:
        for i in range(len(matched) - 1, 0, -1):
            if matched[i] in " -":
                candidate = matched[:i].rstrip(" -")
                if detector.valid(candidate):
                    return len(candidate)
    return None


# Something every built-in detector's match contains: a digit (cards, IBANs, phones), "@" (e-mail), or a
# key's prefix. Text without any (most chat text) skips them: one search instead of seven. Blocked
# patterns are the operator's regexes and always run.
_PREFILTERED = frozenset(d.rule for d in DETECTORS)
_ANY_CANDIDATE = re.compile(r"[0-9@]|sk-|llmh_|gh[pousr]_|github_pat_|AKIA|ASIA|xox|eyJ|earer ")


def may_match(detectors: Iterable[Detector], text: str) -> bool:
    """False when no detector can match ``text`` (a cheap test before the detectors run)."""
    return any(d.rule not in _PREFILTERED for d in detectors) or _ANY_CANDIDATE.search(text) is not None


def find_hits(detectors: Iterable[Detector], text: str, pos: int = 0) -> list[Hit]:
    """Non-overlapping matches at or after ``pos``, leftmost first; on a tie the longer, then the
    earlier detector wins. Matches may look behind ``pos`` (for their boundary checks)."""
    builtin_possible = _ANY_CANDIDATE.search(text, max(0, pos - 8)) is not None
    found: list[tuple[int, int, int, Hit]] = []
    for rank, detector in enumerate(detectors):
        if not builtin_possible and detector.rule in _PREFILTERED:
            continue
        found.extend((h.start, h.start - h.end, rank, h) for h in _hits_of(detector, text, pos))
    found.sort(key=lambda t: t[:3])
    chosen: list[Hit] = []
    edge = pos
    for _, _, _, hit in found:
        if hit.start >= edge:
            chosen.append(hit)
            edge = hit.end
    return chosen


def render(text: str, start: int, end: int, hits: Iterable[Hit]) -> str:
    """``text[start:end]`` with each hit inside it replaced by its marker."""
    out: list[str] = []
    at = start
    for hit in hits:
        if hit.start < start or hit.end > end:
            continue
        out.append(text[at : hit.start])
        out.append(hit.detector.replacement)
        at = hit.end
    out.append(text[at:end])
    return "".join(out)


# ----- redacting whole texts -------------------------------------------------------------------------
def redact_text(detectors: Sequence[Detector], text: str) -> tuple[str, list[Hit]]:
    """``text`` with every match replaced, and the matches (empty: ``text`` unchanged)."""
    if not detectors or not text:
        return text, []
    hits = find_hits(detectors, text)
    return (render(text, 0, len(text), hits), hits) if hits else (text, [])


def redact_json(detectors: Sequence[Detector], text: str) -> tuple[str, list[Hit]]:
    """Tool-call arguments: the strings (keys too) of the JSON are redacted, so the result is still
    JSON; arguments that do not parse are redacted as plain text."""
    if not detectors or not text:
        return text, []
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return redact_text(detectors, text)
    hits: list[Hit] = []

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            new, found = redact_text(detectors, node)
            hits.extend(found)
            return new
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {walk(k): walk(v) for k, v in node.items()}
        return node

    try:
        redacted = walk(value)
    except RecursionError:
        return redact_text(detectors, text)
    return (json.dumps(redacted, ensure_ascii=False), hits) if hits else (text, [])


def token_ends(items: Sequence[TokenLogprob]) -> list[int]:
    """Where each token's text ends, in characters of the decoded answer."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    ends, length = [], 0
    for item in items:
        length += len(decoder.decode(item.token))
        ends.append(length)
    return ends


def logprobs_kept(
    items: list[TokenLogprob] | None, text: str, hits: Sequence[Hit], cap: int | None = None
) -> list[TokenLogprob] | None:
    """The log-probabilities of tokens outside the redacted spans (and within ``cap`` characters); none
    at all when the tokens do not spell ``text`` (their offsets cannot be trusted)."""
    if not items:
        return items
    ends = token_ends(items)
    if ends[-1] != len(text):
        return [] if hits or cap is not None else items
    kept, start = [], 0
    for item, end in zip(items, ends, strict=True):
        inside = any(h.start < end and start < h.end for h in hits)
        if not inside and (cap is None or end <= cap):
            kept.append(item)
        start = end
    return kept


def original_offset(position: int, hits: Sequence[Hit]) -> int:
    """Where ``position`` of the redacted text lies in the original (a marker's inside: its start)."""
    shift = 0
    for hit in hits:
        start = hit.start + shift
        if position <= start:
            break
        if position < start + len(hit.detector.replacement):
            return hit.start
        shift += len(hit.detector.replacement) - (hit.end - hit.start)
    return position - shift

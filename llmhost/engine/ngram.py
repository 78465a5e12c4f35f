"""Prompt-lookup (n-gram) drafts for speculative decoding: no draft model, only the sequence itself.

When the text being written repeats something already in the context (code edited in place, an answer
that quotes its sources, a JSON object echoing its input), the tokens that followed the last occurrence
of the newest few tokens are a good guess at what comes next. The engine feeds that guess to the model
with the newest token and checks every drafted position in the same decode call (see
:meth:`llmhost.engine.runner.LlamaRunner.step`), so one pass over the weights can yield several tokens.

The index maps each n-gram of the sequence to the position after its latest occurrence and grows with
the sequence, so finding a draft costs a few dictionary lookups a step, whatever the context length.
Longer n-grams are tried first (a four-token match is a better guess than a three-token one), as in
prompt-lookup decoding and llama.cpp's ``ngram-simple``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["DRAFT_START", "NGRAM_MAX", "NGRAM_MIN", "NgramIndex", "PredictionIndex", "adapt_draft"]

NGRAM_MAX = 4  # the longest n-gram looked up
NGRAM_MIN = 3  # shorter matches guess wrong too often (in prose too) to be worth their logits rows
DRAFT_START = 8  # a sequence's first draft length, before it adapts


def adapt_draft(length: int, drafted: int, accepted: int, most: int) -> int:
    """The next draft length after a draft of ``drafted`` tokens had ``accepted`` of them taken.

    Every drafted token costs a logits row whether it is kept or not (on two CPU cores ~5 ms each for
    Gemma 3's 262k vocabulary, against ~12 ms for a whole one-token step), so the length follows how
    well drafts have been doing: two longer after a draft taken whole, one shorter after a miss
    (Hugging Face's heuristic schedule for assisted generation).
    """
    if accepted >= drafted:
        return min(length + 2, most)
    return max(length - 1, 1)


class NgramIndex:
    """Where each n-gram (``NGRAM_MIN`` to ``NGRAM_MAX`` tokens) of a token list last occurred."""

    __slots__ = ("_follow", "_indexed")

    def __init__(self) -> None:
        # _follow[n][gram] = index of the token that followed the latest earlier occurrence of gram.
        self._follow: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(NGRAM_MIN, NGRAM_MAX + 1)}
        self._indexed = 0  # n-grams ending before this index are in the maps

    def _extend(self, tokens: list[int]) -> None:
        # Index the n-grams that have a following token; the newest one (the lookup key) stays out, so
        # a lookup never finds the very occurrence it is looking from.
        end = len(tokens) - 1
        for i in range(self._indexed, end):
            for n, follow in self._follow.items():
                if i + 1 >= n:
                    follow[tuple(tokens[i + 1 - n : i + 1])] = i + 1
        self._indexed = max(self._indexed, end)

    def draft(self, tokens: list[int], max_len: int) -> list[int]:
        """Up to ``max_len`` tokens that followed the latest earlier occurrence of the longest matching
        tail of ``tokens`` (which only ever grows between calls); empty when nothing matches."""
        if max_len <= 0:
            return []
        self._extend(tokens)
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if len(tokens) <= n:
                continue
            start = self._follow[n].get(tuple(tokens[-n:]))
            if start is not None:
                # The text since that occurrence is taken to repeat with that period: in a loop the latest
                # occurrence is right behind the tail, and the draft goes round it as often as it fits.
                period = len(tokens) - start
                return [tokens[start + i % period] for i in range(max_len)]
        return []


class PredictionIndex:
    """Drafts from a text the answer is expected to repeat (OpenAI's Predicted Outputs: the file being
    edited, the document being corrected).

    While the answer is the prediction's first few tokens, the draft is what follows them. Then its newest
    ``NGRAM_MAX`` to ``NGRAM_MIN`` tokens are looked up in the prediction, the first occurrence past
    where the answer was last found winning (a repeated line keeps its place), and the draft is what
    follows it there. An answer that has left the prediction gets no draft from it until it joins again.
    """

    __slots__ = ("_at", "_cursor", "_prediction")

    def __init__(self, prediction: Sequence[int]) -> None:
        self._prediction = list(prediction)
        self._cursor = 0  # where in the prediction the answer was last found
        # _at[n][gram] = the positions right after each occurrence of gram, ascending.
        self._at: dict[int, dict[tuple[int, ...], list[int]]] = {
            n: {} for n in range(NGRAM_MIN, NGRAM_MAX + 1)
        }
        for n, at in self._at.items():
            for end in range(n, len(self._prediction) + 1):
                at.setdefault(tuple(self._prediction[end - n : end]), []).append(end)

    def draft(self, answer: Sequence[int], max_len: int) -> list[int]:
        """Up to ``max_len`` tokens of the prediction that follow where ``answer`` (the tokens written
        so far) now stands in it; empty when it stands nowhere."""
        if max_len <= 0 or not self._prediction:
            return []
        head = len(answer)
        if head <= NGRAM_MAX and self._prediction[:head] == list(answer):  # still the prediction's start
            self._cursor = head
            return self._prediction[head : head + max_len]
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if len(answer) < n:
                continue
            ends = self._at[n].get(tuple(answer[-n:]))
            if ends:
                after = bisect.bisect_right(ends, self._cursor)  # the answer only moves forward
                end = ends[after] if after < len(ends) else ends[-1]
                self._cursor = end
                return self._prediction[end : end + max_len]
        return []

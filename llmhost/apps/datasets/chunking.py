"""Chunks by tokens, with overlap, and exact character offsets into the document's text.

The text is split into words (runs of non-space) with their offsets; each distinct word is counted in
the embedding model's tokens once; words are packed greedily up to ``chunk_tokens``, and the next chunk
starts ``overlap`` tokens back. A word longer than a whole chunk is cut at the character where its
share of tokens runs out, so no chunk is ever longer than the model embeds at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Chunk", "chunk_text", "words"]

_WORD = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    start: int  # offsets into the document's text: text[start:end]
    end: int
    tokens: int


def words(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _WORD.finditer(text)]


def chunk_text(
    text: str, count: Callable[[Sequence[str]], list[int]], chunk_tokens: int, overlap: int
) -> list[Chunk]:
    """``count(words)`` gives each word's token count (called once, with the distinct words)."""
    spans = words(text)
    if not spans:
        return []
    distinct = sorted({text[a:b] for a, b in spans})
    sizes = dict(zip(distinct, count(distinct), strict=True))
    pieces: list[tuple[int, int, int]] = []  # (start, end, tokens), long words cut into parts
    for a, b in spans:
        n = max(1, sizes[text[a:b]])
        if n <= chunk_tokens:
            pieces.append((a, b, n))
            continue
        parts = -(-n // chunk_tokens)
        step = max(1, -(-(b - a) // parts))
        for s in range(a, b, step):
            pieces.append((s, min(b, s + step), -(-n // parts)))
    chunks: list[Chunk] = []
    i = 0
    while i < len(pieces):
        total, j = 0, i
        while j < len(pieces) and (total + pieces[j][2] <= chunk_tokens or j == i):
            total += pieces[j][2]
            j += 1
        chunks.append(Chunk(len(chunks), pieces[i][0], pieces[j - 1][1], total))
        if j >= len(pieces):
            break
        back, k = 0, j
        while k - 1 > i and back + pieces[k - 1][2] <= overlap:
            back += pieces[k - 1][2]
            k -= 1
        i = k
    return chunks

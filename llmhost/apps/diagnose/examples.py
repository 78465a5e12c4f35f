"""The few-shot example store: solved diagnostics shipped as files, chosen per request by similarity.

Each ``examples/<category>-<slug>.json`` holds a document and the suggestions that fit it. For a new
document the store embeds it and picks examples by maximal marginal relevance (MMR): each pick is the
example most similar to the document, less its similarity to the examples already picked, so the
prompt gets close examples that are not near-copies of each other. Examples of the document's own
category come first; the others fill in when it has too few. Example vectors are computed once per
embedding model and kept.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from llmhost.apps.diagnose.document import DiagnosticsDocument, Suggestion, serialize

__all__ = ["Example", "ExampleStore", "mmr"]

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    category: str
    document: DiagnosticsDocument
    suggestions: tuple[Suggestion, ...]

    @property
    def text(self) -> str:
        return serialize(self.document)

    def render(self) -> str:
        """The example as the prompt shows it: the document, then the answer as JSON."""
        answer = {"suggestions": [s.model_dump(exclude={"notes"}) for s in self.suggestions]}
        return f"Document:\n{self.text}\nSuggestions:\n{json.dumps(answer, ensure_ascii=False)}"


def mmr(query: np.ndarray, candidates: np.ndarray, k: int, diversity: float = 0.3) -> list[int]:
    """Indices of ``k`` rows of ``candidates`` (unit vectors) by maximal marginal relevance to ``query``:
    score = (1 - diversity) * sim(query) - diversity * max sim(already picked)."""
    if len(candidates) == 0 or k <= 0:
        return []
    relevance = candidates @ query
    picked: list[int] = []
    left = list(range(len(candidates)))
    while left and len(picked) < k:
        redundancy = (candidates[left] @ candidates[picked].T).max(axis=1) if picked else np.zeros(len(left))
        scores = (1 - diversity) * relevance[left] - diversity * redundancy
        best = left[int(np.argmax(scores))]
        picked.append(best)
        left.remove(best)
    return picked


class ExampleStore:
    """The shipped examples (or those in ``folder``), with their vectors per embedding model."""

    def __init__(self, folder: Path | None = None) -> None:
        base = folder or Path(str(resources.files("llmhost.apps.diagnose") / "examples"))
        self.examples: list[Example] = []
        for path in sorted(base.glob("*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            doc = DiagnosticsDocument.model_validate(data["document"])
            suggestions = tuple(Suggestion.model_validate(s) for s in data["suggestions"])
            self.examples.append(Example(str(data["id"]), str(data["category"]), doc, suggestions))
        self._vectors: dict[str, np.ndarray] = {}
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self.examples)

    def categories(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.examples:
            counts[e.category] = counts.get(e.category, 0) + 1
        return counts

    async def vectors(self, model: str, embed: Embed) -> np.ndarray:
        async with self._lock:
            if model not in self._vectors:
                rows = await embed([e.text for e in self.examples]) if self.examples else []
                self._vectors[model] = np.asarray(rows, dtype=np.float32).reshape(len(self.examples), -1)
            return self._vectors[model]

    async def select(self, doc_text: str, category: str, k: int, model: str, embed: Embed) -> list[Example]:
        """Up to ``k`` examples for a document: its own category first, by MMR."""
        if k <= 0 or not self.examples:
            return []
        vectors = await self.vectors(model, embed)
        (query,) = await embed([doc_text])
        q = np.asarray(query, dtype=np.float32)
        same = [i for i, e in enumerate(self.examples) if e.category == category]
        other = [i for i, e in enumerate(self.examples) if e.category != category]
        chosen = [same[j] for j in mmr(q, vectors[same], k)] if same else []
        if len(chosen) < k and other:
            chosen += [other[j] for j in mmr(q, vectors[other], k - len(chosen))]
        return [self.examples[i] for i in chosen]


def examples_in(categories: Sequence[str], store: ExampleStore) -> dict[str, list[str]]:
    """Example ids per category (for ``GET /v1/diagnose/model``)."""
    return {c: [e.id for e in store.examples if e.category == c] for c in categories}

"""The diagnose engine, an app on the pipeline: a diagnostics document in, ranked suggestions out.

For one document, top to bottom:

1. **serialize** it (:func:`~llmhost.apps.diagnose.document.serialize`); the text, the model, the
   template version and the options are the **response cache**'s key: a repeated diagnosis is answered
   from memory (``cached: true``, the same id);
2. **select examples**: embed the text and pick ``examples`` solved cases by MMR (:mod:`.examples`);
3. **render** the category's versioned prompt template (``prompts/<category>.vN.txt``);
4. **generate** through the pipeline (the caller's key, limits, policy, usage and audit apply) under
   :data:`~llmhost.apps.diagnose.document.SUGGESTIONS_SCHEMA`, so every output parses;
5. **validate**: names a suggestion refers to must be in the document (unknown ones are removed and
   noted; a suggestion that names only unknown ones is dropped), confidence in 0..1 (clamped, noted),
   contradicting suggestions (one increases what another decreases ...) flagged on both;
6. **filter** by ``min_confidence``; **de-duplicate** by embedding similarity (the more confident of
   two near-identical suggestions stays; two that contradict are never merged); **rank** by confidence;
7. **store** the diagnosis, so feedback can refer to it (:mod:`.store`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import string
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from llmhost.apps.diagnose.document import (
    SUGGESTIONS_SCHEMA,
    DiagnosticsDocument,
    Suggestion,
    parse_suggestions,
    serialize,
)
from llmhost.apps.diagnose.examples import ExampleStore
from llmhost.apps.diagnose.store import DiagnoseStore
from llmhost.core.types import (
    ChatMessage,
    Embeddings,
    EmbedRequest,
    InferenceRequest,
    RequestContext,
    ResponseFormat,
    Result,
    Sampling,
    new_id,
)
from llmhost.errors import RequestError

__all__ = ["DiagnoseEngine", "DiagnoseOptions", "Templates", "contradicts"]


class _Pipeline(Protocol):
    async def run(self, ctx: RequestContext, request: InferenceRequest) -> Result: ...

    async def embed(self, ctx: RequestContext, request: EmbedRequest) -> Embeddings: ...


@dataclass(frozen=True, slots=True)
class DiagnoseOptions:
    model: str
    embedding_model: str
    min_confidence: float = 0.6
    examples: int = 3
    dedup_similarity: float = 0.9
    temperature: float = 0.2


class Templates:
    """The prompt templates, one per category, newest version of each (``<category>.v<N>.txt``)."""

    def __init__(self, folder: Path | None = None) -> None:
        base = folder or Path(str(resources.files("llmhost.apps.diagnose") / "prompts"))
        self.versions: dict[str, tuple[int, str, string.Template]] = {}
        for path in base.glob("*.v*.txt"):
            match = re.fullmatch(r"(\w+)\.v(\d+)\.txt", path.name)
            if match is None:
                continue
            category, version = match.group(1), int(match.group(2))
            if category not in self.versions or version > self.versions[category][0]:
                text = string.Template(path.read_text(encoding="utf-8"))
                self.versions[category] = (version, f"{category}.v{version}", text)

    def name(self, category: str) -> str:
        """The template's name for ``category`` (``error.v1``)."""
        return self._get(category)[1]

    def render(self, category: str, **values: str) -> tuple[str, str]:
        """The prompt and the template's name."""
        version = self._get(category)
        return version[2].substitute(**values), version[1]

    def _get(self, category: str) -> tuple[int, str, string.Template]:
        version = self.versions.get(category)
        if version is None:
            raise RequestError(f"no prompt template for category {category!r}", param="category")
        return version


# ----- contradictions ------------------------------------------------------------------------------------
_OPPOSITES = [
    ("increase", "decrease"),
    ("raise", "lower"),
    ("enable", "disable"),
    ("add", "remove"),
    ("start", "stop"),
    ("upgrade", "downgrade"),
    ("grow", "shrink"),
    ("lengthen", "shorten"),
]
_WORD = re.compile(r"[a-z0-9_]+")
_STOP = {"the", "a", "an", "to", "of", "on", "in", "for", "and", "or", "by", "from", "with", "its", "it"}


def _verb_objects(text: str) -> dict[str, set[str]]:
    words = _WORD.findall(text.casefold())
    found: dict[str, set[str]] = {}
    for i, w in enumerate(words):
        for pair in _OPPOSITES:
            for verb in pair:
                if w.startswith(verb):
                    found.setdefault(verb, set()).update(x for x in words[i + 1 : i + 5] if x not in _STOP)
    return found


def contradicts(a: Suggestion, b: Suggestion) -> bool:
    """Whether one suggestion does the opposite of the other to the same thing (``increase the pool
    size`` against ``decrease the pool size``)."""
    va = _verb_objects(" ".join([a.suggestion, *a.actions]))
    vb = _verb_objects(" ".join([b.suggestion, *b.actions]))
    for x, y in _OPPOSITES:
        for p, q in ((x, y), (y, x)):
            if p in va and q in vb and va[p] & vb[q]:
                return True
    return False


# ----- the engine ----------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Cached:
    at: float
    answer: dict[str, Any]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


@dataclass
class DiagnoseEngine:
    pipeline: _Pipeline
    store: DiagnoseStore
    examples: ExampleStore = field(default_factory=ExampleStore)
    templates: Templates = field(default_factory=Templates)
    cache_entries: int = 1000
    cache_ttl: float = 3600.0
    clock: Callable[[], float] = time.monotonic
    stats: CacheStats = field(default_factory=CacheStats)
    _cache: OrderedDict[str, _Cached] = field(default_factory=OrderedDict)

    def describe(self, options: DiagnoseOptions) -> dict[str, Any]:
        return {
            "model": options.model,
            "embedding_model": options.embedding_model,
            "templates": sorted(v[1] for v in self.templates.versions.values()),
            "examples": self.examples.categories(),
            "min_confidence": options.min_confidence,
            "examples_per_prompt": options.examples,
            "output_schema": SUGGESTIONS_SCHEMA,
            "cache": {"entries": len(self._cache), "hits": self.stats.hits, "misses": self.stats.misses},
        }

    async def diagnose(
        self, ctx: Callable[[], RequestContext], doc: DiagnosticsDocument, options: DiagnoseOptions
    ) -> dict[str, Any]:
        """The diagnosis as the API returns it. ``ctx()`` makes a fresh context for each pipeline call
        (the caller's principal and door)."""
        started = time.perf_counter()
        text = serialize(doc)
        category = doc.resolved_category
        key = hashlib.sha256(f"{options}\0{self.templates.name(category)}\0{text}".encode()).hexdigest()
        hit = self._cache.get(key)
        if hit is not None and self.clock() - hit.at <= self.cache_ttl:
            self._cache.move_to_end(key)
            self.stats.hits += 1
            return {**hit.answer, "cached": True}
        self.stats.misses += 1

        async def embed(texts: list[str]) -> list[list[float]]:
            result = await self.pipeline.embed(ctx(), EmbedRequest(options.embedding_model, tuple(texts)))
            return result.vectors

        chosen = await self.examples.select(text, category, options.examples, options.embedding_model, embed)
        names = sorted(doc.components())
        prompt, template = self.templates.render(
            category,
            examples="\n\n".join(e.render() for e in chosen) or "(none)",
            document=text,
            components=", ".join(names) or "(none named)",
        )
        request = InferenceRequest(
            "chat",
            options.model,
            messages=(ChatMessage("user", prompt),),
            # No max_tokens: the schema bounds the output (MAX_OUTPUT_TOKENS at most), and a cap larger
            # than what is left of a small model's context would refuse the request.
            sampling=Sampling(temperature=options.temperature, seed=0),
            response_format=ResponseFormat("json_schema", SUGGESTIONS_SCHEMA, name="suggestions"),
        )
        result = await self.pipeline.run(ctx(), request)
        try:
            suggestions = parse_suggestions(result.text)
        except ValueError as exc:
            suggestions, problem = [], str(exc)
        else:
            problem = ""
        kept, dropped = _validate(suggestions, set(names))
        kept, below = _filter(kept, options.min_confidence)
        kept, duplicates = await _dedup(kept, options.dedup_similarity, embed)
        kept.sort(key=lambda s: -s.confidence)
        answer = {
            "id": new_id("diag"),
            "object": "diagnosis",
            "created": int(time.time()),
            "category": category,
            "model": result.model,
            "template": template,
            "examples": [e.id for e in chosen],
            "suggestions": [{"index": i, **s.model_dump()} for i, s in enumerate(kept, 1)],
            "dropped": dropped + below + duplicates,
            "usage": {
                "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens,
            },
            "latency_s": round(time.perf_counter() - started, 3),
            "cached": False,
        }
        await asyncio.to_thread(self.store.add, answer, ctx().principal.name)
        if problem:
            answer["problem"] = problem  # not cached: the next try may parse
        else:
            self._cache[key] = _Cached(self.clock(), answer)
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
        return answer


def _validate(
    suggestions: list[Suggestion], names: set[str]
) -> tuple[list[Suggestion], list[dict[str, Any]]]:
    kept: list[Suggestion] = []
    dropped: list[dict[str, Any]] = []
    lowered = {n.casefold(): n for n in names}
    for s in suggestions:
        known = [lowered[c.casefold()] for c in s.components if c.casefold() in lowered]
        unknown = [c for c in s.components if c.casefold() not in lowered]
        if s.components and not known:
            dropped.append(
                {"suggestion": s.suggestion, "reason": f"names only unknown components: {unknown}"}
            )
            continue
        notes = list(s.notes) + [f"unknown component {c!r} removed" for c in unknown]
        kept.append(s.model_copy(update={"components": known, "notes": notes}))
    for i, a in enumerate(kept):
        for j, b in enumerate(kept):
            if i < j and contradicts(a, b):
                a.notes.append(f"contradicts suggestion {j + 1}")
                b.notes.append(f"contradicts suggestion {i + 1}")
    return kept, dropped


def _filter(suggestions: list[Suggestion], floor: float) -> tuple[list[Suggestion], list[dict[str, Any]]]:
    kept = [s for s in suggestions if s.confidence >= floor]
    below = [
        {"suggestion": s.suggestion, "reason": f"confidence {s.confidence:g} below {floor:g}"}
        for s in suggestions
        if s.confidence < floor
    ]
    return kept, below


async def _dedup(
    suggestions: list[Suggestion], threshold: float, embed: Callable[[list[str]], Any]
) -> tuple[list[Suggestion], list[dict[str, Any]]]:
    if len(suggestions) < 2:
        return suggestions, []
    vectors = np.asarray(await embed([s.suggestion for s in suggestions]), dtype=np.float32)
    order = sorted(range(len(suggestions)), key=lambda i: -suggestions[i].confidence)
    kept: list[int] = []
    dropped: list[dict[str, Any]] = []
    for i in order:
        # Opposites embed close together ("increase X" / "decrease X") but are not the same advice.
        twin = next(
            (
                k
                for k in kept
                if float(vectors[i] @ vectors[k]) >= threshold
                and not contradicts(suggestions[i], suggestions[k])
            ),
            None,
        )
        if twin is None:
            kept.append(i)
        else:
            reason = f"near-duplicate of {suggestions[twin].suggestion!r}"
            dropped.append({"suggestion": suggestions[i].suggestion, "reason": reason})
    return [suggestions[i] for i in sorted(kept)], dropped

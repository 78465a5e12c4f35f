"""The diagnostics document (what a client sends) and the suggestions (what the engine answers).

A :class:`DiagnosticsDocument` holds typed items: errors (type, message, stack), metric observations
(expected against observed), stalls and timeouts, log lines, system-state key/values, and relations
between items (``"db" -> "api": depends_on``). Every item may name the ``component`` it concerns; those
names, and the items' ids, are what a suggestion may refer to.

:func:`serialize` turns a document into the structured text the prompt carries: one section per kind,
one line per item, in a fixed order with fixed number formatting, so the same document always gives
the same text (which is also the response cache's key). :func:`parse_suggestions` is the way back: the
model's JSON output (held to :data:`SUGGESTIONS_SCHEMA` by a grammar) into typed :class:`Suggestion` s.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "CATEGORIES",
    "MAX_OUTPUT_TOKENS",
    "SUGGESTIONS_SCHEMA",
    "Category",
    "DiagnosticsDocument",
    "ErrorItem",
    "LogLine",
    "MetricObservation",
    "Relation",
    "StallItem",
    "Suggestion",
    "parse_suggestions",
    "serialize",
]

Category = Literal["error", "performance", "stall", "timeout", "resource", "configuration"]
CATEGORIES: tuple[str, ...] = ("error", "performance", "stall", "timeout", "resource", "configuration")

_MAX_TEXT = 4000


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=128, description="How suggestions may refer to this item.")
    component: str | None = Field(None, max_length=128, description="The part of the system it concerns.")


class ErrorItem(_Item):
    type: str = Field(min_length=1, max_length=256, description="The error's class, e.g. KeyError.")
    message: str = Field("", max_length=_MAX_TEXT)
    stack: list[str] = Field(default_factory=list, max_length=64, description="Frames, innermost last.")
    count: int = Field(1, ge=1, description="How many times it happened.")


class MetricObservation(_Item):
    name: str = Field(min_length=1, max_length=256)
    expected: float | None = None
    observed: float
    unit: str = Field("", max_length=32)
    threshold: float | None = Field(None, description="Where the metric counts as bad, when known.")


class StallItem(_Item):
    kind: Literal["stall", "timeout", "deadlock", "hang"] = "stall"
    operation: str = Field(min_length=1, max_length=256)
    waited_s: float | None = Field(None, ge=0)
    limit_s: float | None = Field(None, ge=0)


class LogLine(_Item):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    message: str = Field(min_length=1, max_length=_MAX_TEXT)
    timestamp: str | None = Field(None, max_length=64)


class Relation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=128)
    target: str = Field(min_length=1, max_length=128)
    kind: str = Field("depends_on", max_length=64)


class DiagnosticsDocument(BaseModel):
    """What went wrong, as structured facts; at least one error, metric, stall or log line."""

    model_config = ConfigDict(extra="forbid")

    category: Category | None = Field(None, description="The kind of problem; inferred when unset.")
    summary: str = Field("", max_length=_MAX_TEXT, description="The reporter's one-line description.")
    errors: list[ErrorItem] = Field(default_factory=list, max_length=100)
    metrics: list[MetricObservation] = Field(default_factory=list, max_length=200)
    stalls: list[StallItem] = Field(default_factory=list, max_length=100)
    logs: list[LogLine] = Field(default_factory=list, max_length=500)
    system: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=200)
    relations: list[Relation] = Field(default_factory=list, max_length=200)

    @field_validator("system")
    @classmethod
    def _keys(cls, system: dict[str, Any]) -> dict[str, Any]:
        if any(not k or len(k) > 128 for k in system):
            raise ValueError("system keys must be 1-128 characters")
        return system

    @model_validator(mode="after")
    def _not_empty(self) -> DiagnosticsDocument:
        if not (self.errors or self.metrics or self.stalls or self.logs):
            raise ValueError("a diagnostics document needs at least one error, metric, stall or log line")
        return self

    @property
    def resolved_category(self) -> str:
        """The given category, else the one its items suggest."""
        if self.category is not None:
            return self.category
        if any(s.kind in ("timeout",) for s in self.stalls):
            return "timeout"
        if self.stalls:
            return "stall"
        if self.errors:
            return "error"
        if any(_is_resource(m.name) for m in self.metrics):
            return "resource"
        if self.metrics:
            return "performance"
        return "configuration"

    def components(self) -> set[str]:
        """Every component and item id the document names: what a suggestion may refer to."""
        names: set[str] = set()
        for item in (*self.errors, *self.metrics, *self.stalls, *self.logs):
            names.update(n for n in (item.component, item.id) if n)
        for relation in self.relations:
            names.update((relation.source, relation.target))
        return names


_RESOURCE_WORDS = ("memory", "mem_", "disk", "cpu", "fd", "file_descriptors", "inode", "swap", "heap")


def _is_resource(name: str) -> bool:
    lowered = name.casefold()
    return any(word in lowered for word in _RESOURCE_WORDS)


def _num(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.6g}"


def _where(item: _Item) -> str:
    parts = [f"id={item.id}" if item.id else "", f"component={item.component}" if item.component else ""]
    return " ".join(p for p in parts if p)


def _line(*fields: str) -> str:
    return " | ".join(f for f in fields if f)


def serialize(doc: DiagnosticsDocument) -> str:
    """The document as stable structured text: sections in a fixed order, one line per item."""
    out = [f"category: {doc.resolved_category}"]
    if doc.summary:
        out.append(f"summary: {_flat(doc.summary)}")
    if doc.errors:
        out.append("errors:")
        for e in doc.errors:
            frames = " <- ".join(_flat(f) for f in reversed(e.stack[-8:]))
            count = f"x{e.count}" if e.count > 1 else ""
            out.append(
                f"- {_line(e.type, _flat(e.message), count, _where(e), f'stack: {frames}' if frames else '')}"
            )
    if doc.metrics:
        out.append("metrics:")
        for m in doc.metrics:
            unit = f" {m.unit}" if m.unit else ""
            ratio = ""
            if m.expected not in (None, 0):
                ratio = f"{m.observed / m.expected:.3g}x expected"
            threshold = f"threshold {_num(m.threshold)}{unit}" if m.threshold is not None else ""
            values = f"observed {_num(m.observed)}{unit}, expected {_num(m.expected)}{unit}"
            out.append(f"- {_line(m.name, values, ratio, threshold, _where(m))}")
    if doc.stalls:
        out.append("stalls:")
        for s in doc.stalls:
            waited = f"waited {_num(s.waited_s)} s" if s.waited_s is not None else ""
            limit = f"limit {_num(s.limit_s)} s" if s.limit_s is not None else ""
            out.append(f"- {_line(s.kind, _flat(s.operation), waited, limit, _where(s))}")
    if doc.logs:
        out.append("logs:")
        for log in doc.logs[-50:]:
            out.append(f"- {_line(log.timestamp or '', log.level.upper(), _flat(log.message), _where(log))}")
    if doc.system:
        out.append("system:")
        for key in sorted(doc.system):
            out.append(f"- {key} = {_value(doc.system[key])}")
    if doc.relations:
        out.append("relations:")
        for r in sorted(doc.relations, key=lambda r: (r.source, r.kind, r.target)):
            out.append(f"- {r.source} {r.kind} {r.target}")
    return "\n".join(out)


def _flat(text: str) -> str:
    return " ".join(text.split())[:_MAX_TEXT]


def _value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _num(value)
    return _flat(str(value))


# ----- suggestions ---------------------------------------------------------------------------------------
class Suggestion(BaseModel):
    """One repair suggestion, as the model writes it and the engine validates it."""

    model_config = ConfigDict(extra="ignore")

    suggestion: str = Field(min_length=1, max_length=2000)
    confidence: float = Field(ge=0.0, le=1.0)
    components: list[str] = Field(default_factory=list, max_length=16)
    actions: list[str] = Field(default_factory=list, max_length=16)
    rationale: str = Field("", max_length=2000)
    notes: list[str] = Field(default_factory=list, description="What validation found (unknown names ...).")


def _strings(n: int, length: int) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "maxLength": length}, "maxItems": n}


SUGGESTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "suggestions": {
            "type": "array",
            "minItems": 1,
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {
                    "suggestion": {"type": "string", "minLength": 1, "maxLength": 200},
                    "confidence": {"type": "number"},
                    "components": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 64},
                        "maxItems": 4,
                    },
                    "actions": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 160},
                        "maxItems": 4,
                    },
                    "rationale": {"type": "string", "maxLength": 240},
                },
                "required": ["suggestion", "confidence", "components", "actions", "rationale"],
            },
        }
    },
    "required": ["suggestions"],
}
"""The shape the model's output is held to: bounded strings, so a whole output is at most ~2,500
characters and always fits :data:`MAX_OUTPUT_TOKENS` (a token is at least one character)."""
MAX_OUTPUT_TOKENS = 2600


def parse_suggestions(text: str) -> list[Suggestion]:
    """The model's JSON output as suggestions; a confidence outside 0..1 is clamped (and noted by the
    validation step); items that are not suggestions at all are dropped. Raises ValueError when the
    text is not the object the schema describes."""
    try:
        data = json.loads(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"the model's output is not JSON: {exc}") from exc
    items = data.get("suggestions") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError("the model's output has no 'suggestions' list")
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        conf = item.get("confidence")
        if isinstance(conf, int | float) and not isinstance(conf, bool) and not 0.0 <= conf <= 1.0:
            note = f"confidence {conf:g} was outside 0..1"
            item = {**item, "confidence": min(1.0, max(0.0, float(conf))), "notes": [note]}
        else:
            item = {**item, "notes": []}
        try:
            out.append(Suggestion.model_validate(item))
        except ValidationError:
            continue
    return out

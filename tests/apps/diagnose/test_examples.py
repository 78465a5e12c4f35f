"""The shipped few-shot examples and prompt templates of the diagnose engine: enough examples per category,
each a valid document with suggestions that respect the output bounds and name only the document's
components, and one ``string.Template`` per category with exactly the three placeholders."""

from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llmhost.apps.diagnose import document as document_module
from llmhost.apps.diagnose.document import CATEGORIES, DiagnosticsDocument, Suggestion, serialize

PACKAGE = Path(document_module.__file__).parent
EXAMPLE_FILES = sorted((PACKAGE / "examples").glob("*.json"))
PLACEHOLDERS = {"examples", "document", "components"}

MAX_SUGGESTION = 160
MAX_ACTION = 100
MAX_RATIONALE = 160
MAX_COMPONENT = 48
MAX_ITEMS = 3


def _load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path.name
    return data


def test_enough_examples_per_category() -> None:
    counts = Counter(_load(p)["category"] for p in EXAMPLE_FILES)
    assert len(EXAMPLE_FILES) >= 30
    assert set(counts) == set(CATEGORIES)
    assert all(counts[c] >= 5 for c in CATEGORIES), counts


def test_ids_are_unique_and_match_file_names() -> None:
    ids = [_load(p)["id"] for p in EXAMPLE_FILES]
    assert len(ids) == len(set(ids))
    assert ids == [p.stem for p in EXAMPLE_FILES]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example(path: Path) -> None:
    data = _load(path)
    assert set(data) == {"id", "category", "document", "suggestions"}
    category = data["category"]
    assert category in CATEGORIES
    assert path.stem.startswith(f"{category}-")
    assert data["id"] == path.stem

    doc = DiagnosticsDocument.model_validate(data["document"])
    assert doc.category == category
    text = serialize(doc)
    assert text.startswith(f"category: {category}\n")
    names = doc.components()

    assert 1 <= len(data["suggestions"]) <= MAX_ITEMS
    for raw in data["suggestions"]:
        s = Suggestion.model_validate(raw)
        assert 0.5 <= s.confidence <= 0.95, s.suggestion
        assert len(s.suggestion) <= MAX_SUGGESTION, s.suggestion
        assert len(s.rationale) <= MAX_RATIONALE, s.rationale
        assert 1 <= len(s.actions) <= MAX_ITEMS, s.suggestion
        assert all(0 < len(a) <= MAX_ACTION for a in s.actions), s.actions
        assert 1 <= len(s.components) <= MAX_ITEMS, s.suggestion
        for name in s.components:
            assert len(name) <= MAX_COMPONENT, name
            assert name in names, f"{path.stem}: {name!r} is not in {sorted(names)}"


def test_examples_within_a_category_differ() -> None:
    by_category: dict[str, list[str]] = {}
    for p in EXAMPLE_FILES:
        data = _load(p)
        by_category.setdefault(data["category"], []).append(
            serialize(DiagnosticsDocument.model_validate(data["document"]))
        )
    for category, texts in by_category.items():
        assert len(set(texts)) == len(texts), category


@pytest.mark.parametrize("category", CATEGORIES)
def test_prompt_template(category: str) -> None:
    path = PACKAGE / "prompts" / f"{category}.v1.txt"
    assert path.is_file()
    template = string.Template(path.read_text(encoding="utf-8"))
    assert template.is_valid()
    assert set(template.get_identifiers()) == PLACEHOLDERS
    rendered = template.substitute(examples="E", document="D", components="C")
    assert all(value in rendered for value in ("E", "D", "C"))
    marked = template.substitute(examples="<<EX>>", document="<<DOC>>", components="<<COMP>>")
    assert marked.index("<<EX>>") < marked.index("<<DOC>>")
    assert marked.rstrip().endswith("Suggestions:")

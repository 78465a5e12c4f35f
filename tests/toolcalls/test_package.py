"""The toolcalls package's public names, and the JSON-prefix helpers its parser stands on."""

from __future__ import annotations

import importlib
import json

import pytest

from llmhost.toolcalls.json_prefix import Incomplete, Invalid, completion, value_end


@pytest.mark.parametrize("name", ["", ".syntax", ".schema", ".grammar", ".parse", ".render", ".json_prefix"])
def test_every_exported_name_exists(name: str) -> None:
    module = importlib.import_module(f"llmhost.toolcalls{name}")
    assert module.__all__ == sorted(module.__all__)
    for exported in module.__all__:
        assert hasattr(module, exported), exported


RICH = '{"a": [1, -2.5e+3, 0, "x\\u00e9\\"y\\\\", true, false, null, {"b": {}}], "c": [], "d": "z"}'


def test_every_prefix_of_a_json_value_can_be_completed() -> None:
    for k in range(len(RICH) + 1):
        prefix = RICH[:k]
        suffix = completion(prefix) if prefix else "{}"
        json.loads(prefix + suffix)


def test_a_complete_value_needs_nothing() -> None:
    assert completion(RICH) == ""
    assert completion("12") == ""


def test_value_end_tells_unfinished_from_invalid() -> None:
    assert value_end(RICH, 0) == len(RICH)
    assert value_end('{"a": 1} tail', 0) == 8
    for k in range(1, len(RICH)):
        with pytest.raises(Incomplete):
            value_end(RICH[:k], 0)
    cases = [('{"a" 1}', 5), ("[1,,2]", 3), ('{"a": 1-2}', 7), ('"\\x"', 2), ('"\\u12g4"', 5), ("nul!", 3)]
    for bad, at in cases:
        with pytest.raises(Invalid) as info:
            value_end(bad, 0)
        assert info.value.pos == at
        # what comes before the fault is still the start of JSON: a stream can always finish it
        json.loads(bad[:at] + completion(bad[:at]))

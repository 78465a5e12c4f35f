"""A small JSON-schema checker for the tests (jsonschema is not a dependency): the keywords tool schemas
use -- type, properties, required, additionalProperties, enum, const, items, min/maxItems, anyOf/oneOf,
minLength/maxLength and local ``$ref``s."""

from __future__ import annotations

from typing import Any

__all__ = ["schema_errors"]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
    "number": (int, float),
    "integer": (int,),
}


def schema_errors(schema: dict[str, Any], value: Any, root: dict[str, Any] | None = None) -> list[str]:
    """What is wrong with ``value`` under ``schema`` (empty when it is valid)."""
    root = schema if root is None else root
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return schema_errors(target, value, root)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [schema_errors(option, value, root) for option in schema[key]]
            return [] if any(not o for o in options) else [f"{value!r} matches none of {key}"]
    errors: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        ok = any(
            isinstance(value, _TYPES[name])
            and not (isinstance(value, bool) and name in ("number", "integer"))
            for name in names
        )
        if not ok:
            return [f"{value!r} is not of type {kinds}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"missing {name!r}" for name in schema.get("required", []) if name not in value]
        for name, item in value.items():
            if name in props:
                errors += schema_errors(props[name], item, root)
            elif schema.get("additionalProperties") is False:
                errors.append(f"unexpected {name!r}")
    if isinstance(value, list):
        if "items" in schema:
            for item in value:
                errors += schema_errors(schema["items"], item, root)
        if len(value) < schema.get("minItems", 0):
            errors.append(f"fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"more than {schema['maxItems']} items")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{value!r} is shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{value!r} is longer than {schema['maxLength']}")
    return errors

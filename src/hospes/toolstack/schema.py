"""A small JSON Schema validator for the subset the HTTP API's OpenAPI document uses.

Supported keywords: ``$ref`` (to ``#/components/schemas/NAME``), ``type`` (a name or
a list of names), ``properties``, ``required``, ``additionalProperties`` (bool or
schema), ``items``, ``enum``, ``minimum``, ``maximum``, ``minLength``,
``maxLength``, ``pattern``, ``minItems``, ``maxItems``, ``minProperties``. Anything else is ignored,
so keep the document within this list (``test_api_contract`` checks it).

``validate(value, schema, components)`` returns a list of messages, empty when the
value conforms; each message starts with the JSON path of the offending part.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

KEYWORDS = frozenset({
    "$ref", "type", "properties", "required", "additionalProperties", "items", "enum", "minimum",
    "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "description", "title",
    "default", "example", "format", "minProperties",
})

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(name, ()))


def resolve(schema: Mapping[str, Any], components: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        prefix = "#/components/schemas/"
        if not ref.startswith(prefix) or ref[len(prefix):] not in components:
            raise KeyError(f"Unresolvable $ref {ref}")
        schema = components[ref[len(prefix):]]
    return schema


def validate(value: Any, schema: Mapping[str, Any], components: Mapping[str, Any], path: str = "$") -> list[str]:
    """Messages for every way ``value`` breaks ``schema`` (empty if it conforms)."""
    schema = resolve(schema, components)
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(value, n) for n in names):
            return [f"{path}: expected {' or '.join(names)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: must be one of {', '.join(map(repr, schema['enum']))}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: does not match {schema['pattern']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: less than {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: greater than {schema['maximum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += validate(item, schema["items"], components, f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in value:
                errors.append(f"{path}: missing required property {key!r}")
        if len(value) < schema.get("minProperties", 0):
            errors.append(f"{path}: needs at least {schema['minProperties']} of {', '.join(props) or 'properties'}")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors += validate(item, props[key], components, f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unknown property {key!r}")
            elif isinstance(extra, Mapping):
                errors += validate(item, extra, components, f"{path}.{key}")
    return errors


def unsupported_keywords(schema: Any) -> set[str]:
    """Keywords in ``schema`` (recursively) that :func:`validate` does not implement."""
    found: set[str] = set()
    if isinstance(schema, Mapping):
        for key, sub in schema.items():
            if key not in KEYWORDS:
                found.add(key)
            if key == "properties" and isinstance(sub, Mapping):
                for prop in sub.values():
                    found |= unsupported_keywords(prop)
            elif key in ("items", "additionalProperties") and isinstance(sub, Mapping):
                found |= unsupported_keywords(sub)
    return found

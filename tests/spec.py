"""Checks against OpenAI's OpenAPI spec (the extract in ``tests/openapi``), and an SSE parser.

    validate("CreateChatCompletionResponse", response.json())
    for chunk in sse_objects(response.text):
        validate("CreateChatCompletionStreamResponse", chunk)

The spec declares OpenAPI 3.1, whose schemas are JSON Schema 2020-12, but some of it is still written
in OpenAPI 3.0: ``nullable``, boolean ``exclusiveMinimum``/``exclusiveMaximum``, and 2019-09's
``$recursiveRef``. ``dialect`` rewrites those into 2020-12 before any validation. Vendor keywords
(``x-oaiTypeLabel``, ``x-stainless-const``, ...) and ``discriminator`` only annotate, as in OpenAPI 3.1.

Validation is strict in one way the spec is not: an object may not carry a property its schema does
not name (``unevaluatedProperties: false``), so that a misspelt or invented field fails too.
"""

from __future__ import annotations

import copy
import functools
import heapq
import json
import operator
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import relevance
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.openapi.extract import MAP_OF_SCHEMAS, ONE_SCHEMA, PREFIX

__all__ = ["Event", "dialect", "schemas", "sse_events", "sse_objects", "validate"]

EXTRACT = Path(__file__).with_name("openapi") / "schemas.json"
URI = "urn:openai-openapi"
# allOf, anyOf and oneOf apply their schemas to the object itself, not to an item or property of it.
IN_PLACE = ("allOf", "anyOf", "oneOf")

# Schemas the spec lacks, each made from one it has by letting some places in it be null as well.
# The spec says the legacy completions stream sends CreateCompletionResponse objects, but its own example
# of that stream has "finish_reason": null, and ChatCompletionStreamOptions.include_usage says every chunk
# but the last has "usage": null; CreateCompletionResponse allows neither.
DERIVED = {
    "CreateCompletionResponse.chunk": (
        "CreateCompletionResponse",
        [("properties", "choices", "items", "properties", "finish_reason"), ("properties", "usage")],
    ),
}


def validate(schema_name: str, instance: object, *, extra_properties: Iterable[str] = ()) -> None:
    """Raise ``AssertionError`` listing every way ``instance`` breaks the spec's ``schema_name``.

    ``extra_properties`` are property names accepted in any object though the spec does not name
    them there: fields the real API sends beyond its spec.
    """
    errors = sorted(_validator(schema_name).iter_errors(instance), key=lambda error: list(error.absolute_path))
    problems = [problem for error in errors if (problem := _describe(error, frozenset(extra_properties)))]
    if problems:
        lines = [f"not a valid {schema_name} ({len(problems)} error{'s' * (len(problems) > 1)}):"]
        lines += [f"  {problem}" for problem in problems]
        lines.append(f"  in {_cut(json.dumps(instance, ensure_ascii=False), 2000)}")
        raise AssertionError("\n".join(lines))


def _describe(error: ValidationError, extra_properties: frozenset[str]) -> str | None:
    """``error`` in a line; None if it is only about properties that are named after all."""
    error = _closest(error)
    if error.validator == "unevaluatedProperties":
        # A subschema that fails evaluates none of its properties, so unevaluatedProperties calls them
        # unexpected beside the error that made it fail. Only the properties no part of the schema
        # names are extra.
        named = _named(error.schema) | extra_properties
        unnamed = [name for name in error.instance if name not in named]
        return f"{error.json_path}: the spec names no property {', '.join(map(repr, unnamed))}" if unnamed else None
    return f"{error.json_path}: {_cut(error.message, 300)}"


def _named(schema: dict[str, Any]) -> set[str]:
    """The properties that ``schema`` or any schema it applies to the same object names."""
    names = set(schema.get("properties", ()))
    if schema.get("$ref", "").startswith(PREFIX):
        names |= _named(schemas()[schema["$ref"].removeprefix(PREFIX)])
    for keyword in IN_PLACE:
        for inner in schema.get(keyword, ()):
            names |= _named(inner)
    return names


def _closest(error: ValidationError) -> ValidationError:
    """For a failed anyOf/oneOf, the error of the branch that came closest, if one did.

    A branch whose tag (a property held to one constant, such as ``type``) differs from the instance's
    is not the one meant, however deep its other errors lie; ``best_match`` alone would prefer depth.
    """
    while error.context:
        branches: dict[Any, list[ValidationError]] = {}
        for inner in error.context:
            branches.setdefault(inner.relative_schema_path[0], []).append(inner)
        meant = [found for found in branches.values() if not any(map(_wrong_tag, found))]
        nearest = heapq.nsmallest(2, meant[0] if len(meant) == 1 else error.context, key=relevance)
        if len(meant) != 1 and len(nearest) == 2 and relevance(nearest[0]) == relevance(nearest[1]):
            return error
        error = nearest[0]
    return error


def _wrong_tag(error: ValidationError) -> bool:
    """Whether ``error`` is about a property of the instance that differs from the one value allowed."""
    one_value = error.validator == "const" or (error.validator == "enum" and len(error.validator_value) == 1)
    return one_value and len(error.relative_path) == 1


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@functools.cache
def schemas() -> dict[str, Any]:
    """The extract's ``components/schemas`` and ``DERIVED``, rewritten by ``dialect``, by name."""
    raw = json.loads(EXTRACT.read_text(encoding="utf-8"))["components"]["schemas"]
    for name, (base, places) in DERIVED.items():
        raw[name] = copy.deepcopy(raw[base])
        for place in places:
            functools.reduce(operator.getitem, place, raw[name])["nullable"] = True
    parts = _parts(raw)
    return {name: dialect(schema, name, closed=name not in parts) for name, schema in raw.items()}


@functools.cache
def _validator(schema_name: str) -> Draft202012Validator:
    if schema_name not in schemas():
        raise KeyError(f"{schema_name!r} is not in {EXTRACT.name}: add it to ROOTS in extract.py and regenerate")
    document = {"components": {"schemas": schemas()}}
    registry: Registry[Any] = Registry().with_resource(URI, Resource.from_contents(document, DRAFT202012))
    root = {"$ref": f"{URI}{PREFIX}{schema_name}"}
    return Draft202012Validator(root, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


def dialect(schema: dict[str, Any], component: str, closed: bool = True) -> dict[str, Any]:
    """``schema``, found in the component named ``component``, in plain JSON Schema 2020-12.

    With ``closed``, a schema that lists an object's properties gets ``unevaluatedProperties: false``;
    the schemas it combines with ``allOf`` (or with ``anyOf``/``oneOf`` beside its own ``properties``)
    do not, as each of them names only a part of the object.
    """
    schema = dict(schema)
    names_properties = "properties" in schema or "allOf" in schema
    for keyword in IN_PLACE:
        if keyword in schema:
            whole = closed and keyword != "allOf" and not names_properties
            schema[keyword] = [dialect(inner, component, whole) for inner in schema[keyword]]
    for keyword in ONE_SCHEMA:
        if isinstance(schema.get(keyword), dict):
            schema[keyword] = dialect(schema[keyword], component)
    if "prefixItems" in schema:
        schema["prefixItems"] = [dialect(inner, component) for inner in schema["prefixItems"]]
    for keyword in MAP_OF_SCHEMAS:
        if keyword in schema:
            schema[keyword] = {name: dialect(inner, component) for name, inner in schema[keyword].items()}
    # 2019-09's recursion: in this spec, always a reference to the component itself.
    if schema.pop("$recursiveRef", None) == "#":
        schema["$ref"] = PREFIX + component
    schema.pop("$recursiveAnchor", None)
    # OpenAPI 3.0's exclusive bounds are flags on minimum/maximum; 2020-12's are the bounds themselves.
    for bound in ("minimum", "maximum"):
        exclusive = "exclusive" + bound.capitalize()
        if schema.get(exclusive) is True and bound in schema:
            schema[exclusive] = schema.pop(bound)
        elif schema.get(exclusive) is False:
            del schema[exclusive]
    if closed and names_properties and not {"additionalProperties", "unevaluatedProperties"} & schema.keys():
        schema["unevaluatedProperties"] = False
    if schema.pop("nullable", False):
        return {"anyOf": [schema, {"type": "null"}]}
    return schema


def _parts(raw: dict[str, Any]) -> set[str]:
    """The components that some schema combines with others into one object: ``dialect`` leaves them open."""
    parts: set[str] = set()

    def walk(schema: dict[str, Any], part: bool) -> None:
        target = schema.get("$ref", "")
        if part and target.startswith(PREFIX) and target.removeprefix(PREFIX) not in parts:
            parts.add(target.removeprefix(PREFIX))
            walk(raw[target.removeprefix(PREFIX)], part=True)
        names_properties = "properties" in schema or "allOf" in schema
        for keyword in IN_PLACE:
            for inner in schema.get(keyword, ()):
                walk(inner, part or keyword == "allOf" or names_properties)
        for inner in _nested(schema):
            walk(inner, part=False)

    for schema in raw.values():
        walk(schema, part=False)
    return parts


def _nested(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The schemas inside ``schema`` that apply to its items or properties, not to itself."""
    nested = [schema[keyword] for keyword in ONE_SCHEMA if isinstance(schema.get(keyword), dict)]
    nested += schema.get("prefixItems", [])
    return nested + [inner for keyword in MAP_OF_SCHEMAS for inner in schema.get(keyword, {}).values()]


class Event(NamedTuple):
    """One server-sent event: its ``event:`` name (None without one) and its ``data:`` lines joined."""

    name: str | None
    data: str


def sse_events(body: str) -> list[Event]:
    """The events of a ``text/event-stream`` body, parsed as the HTML standard says.

    Fails if the body ends inside an event: a stream must end each one with a blank line.
    """
    events = []
    name: str | None = None
    data: list[str] = []
    lines = re.split(r"\r\n|\r|\n", body)
    for line in lines[:-1]:
        if not line:
            if data:
                events.append(Event(name, "\n".join(data)))
            name, data = None, []
            continue
        field, colon, value = line.partition(":")
        value = value.removeprefix(" ") if colon else ""
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    assert not lines[-1] and not data and name is None, f"the stream ends inside an event: {body[-200:]!r}"
    return events


def sse_objects(body: str, done: bool = True) -> list[Any]:
    """The JSON objects of a stream's ``data:`` fields; with ``done``, it must end with ``data: [DONE]``."""
    events = sse_events(body)
    if done:
        assert events and events[-1].data == "[DONE]", f"the stream does not end with data: [DONE]: {body[-200:]!r}"
        events = events[:-1]
    assert all(event.data != "[DONE]" for event in events), "data: [DONE] before the end of the stream"
    return [json.loads(event.data) for event in events]

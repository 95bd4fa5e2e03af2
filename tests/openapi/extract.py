"""Cut OpenAI's OpenAPI spec down to the schemas the tests validate against.

    python tests/openapi/extract.py path/to/openapi.json [-o tests/openapi/schemas.json] [NAME ...]

Keeps each named entry of ``components/schemas`` (by default ``ROOTS``) and every entry its ``$ref``s
reach, unchanged but for the keywords that only document (``description``, ``example``, ``x-oaiMeta``).
The ``$ref``s keep their form, ``#/components/schemas/NAME``, so the output resolves them as the spec
does. The input may be the spec's JSON or, with PyYAML installed, its YAML. Needs nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOTS = [
    # What mockgpt sends.
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ErrorResponse",
    "ListModelsResponse",
    "Model",
    # What mockgpt receives.
    "CreateChatCompletionRequest",
    "CreateCompletionRequest",
    # The Responses API: the request, the response, and the events of its stream.
    "CreateResponse",
    "Response",
    "ResponseStreamEvent",
    # Embeddings: the request, and the response.
    "CreateEmbeddingRequest",
    "CreateEmbeddingResponse",
]

PREFIX = "#/components/schemas/"
DOCUMENTATION = frozenset({"description", "example", "examples", "x-oaiMeta"})

# The JSON Schema keywords whose values are schemas; every other keyword holds data.
ONE_SCHEMA = ("items", "additionalItems", "additionalProperties", "unevaluatedItems", "unevaluatedProperties",
              "propertyNames", "contains", "not", "if", "then", "else")
LIST_OF_SCHEMAS = ("allOf", "anyOf", "oneOf", "prefixItems")
MAP_OF_SCHEMAS = ("properties", "patternProperties", "dependentSchemas", "$defs")


def subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The schemas directly inside ``schema``."""
    for keyword in ONE_SCHEMA:
        if isinstance(schema.get(keyword), dict):
            yield schema[keyword]
    for keyword in LIST_OF_SCHEMAS:
        yield from schema.get(keyword, ())
    for keyword in MAP_OF_SCHEMAS:
        yield from schema.get(keyword, {}).values()


def references(schema: dict[str, Any]) -> Iterator[str]:
    """The names of the components ``schema`` refers to, at any depth."""
    targets = [schema.get("$ref"), *schema.get("discriminator", {}).get("mapping", {}).values()]
    for target in targets:
        if isinstance(target, str) and target.startswith(PREFIX):
            yield target.removeprefix(PREFIX)
    for inner in subschemas(schema):
        yield from references(inner)


def closure(schemas: dict[str, Any], roots: list[str]) -> list[str]:
    """``roots`` and every component they reach, sorted."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        if name not in schemas:
            raise SystemExit(f"extract: no schema {name!r} in the spec")
        seen.add(name)
        pending.extend(references(schemas[name]))
    return sorted(seen)


def undocumented(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without its documentation keywords, at any depth; property names are kept."""
    kept = {key: value for key, value in schema.items() if key not in DOCUMENTATION}
    for keyword in ONE_SCHEMA:
        if isinstance(kept.get(keyword), dict):
            kept[keyword] = undocumented(kept[keyword])
    for keyword in LIST_OF_SCHEMAS:
        if keyword in kept:
            kept[keyword] = [undocumented(inner) for inner in kept[keyword]]
    for keyword in MAP_OF_SCHEMAS:
        if keyword in kept:
            kept[keyword] = {name: undocumented(inner) for name, inner in kept[keyword].items()}
    return kept


def load(path: Path) -> dict[str, Any]:
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def extract(spec: dict[str, Any], roots: list[str]) -> dict[str, Any]:
    schemas = spec["components"]["schemas"]
    return {
        "openapi": spec["openapi"],
        "info": {"title": spec["info"]["title"], "version": spec["info"]["version"]},
        "components": {"schemas": {name: undocumented(schemas[name]) for name in closure(schemas, roots)}},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path, help="openapi.json (or openapi.yaml) of openai/openai-openapi")
    parser.add_argument("names", nargs="*", default=ROOTS, help="schemas to keep, with all they reach (default: ROOTS)")
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("schemas.json"))
    arguments = parser.parse_args(argv)
    part = extract(load(arguments.spec), arguments.names)
    # Indented, so that the diff of a regenerated extract shows what the spec changed.
    arguments.output.write_text(json.dumps(part, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    count = len(part["components"]["schemas"])
    print(f"extract: {count} schemas, {arguments.output.stat().st_size:,} bytes -> {arguments.output}", file=sys.stderr)


if __name__ == "__main__":
    main()

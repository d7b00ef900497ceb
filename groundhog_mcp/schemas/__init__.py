"""The JSON Schemas of groundhog-mcp's documents, packaged with the code and used by it."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from referencing import Registry

__all__ = ["SCHEMA_NAMES", "load_schema", "validator"]

SCHEMA_NAMES = ("context_state", "context_config", "state_format")


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema document ``schemas/<name>.schema.json``."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    text = resources.files("groundhog_mcp.schemas").joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _registry() -> Registry[Any]:
    from referencing import Registry, Resource  # loaded on first use, not at start-up

    registry: Registry[Any] = Registry()
    for name in SCHEMA_NAMES:
        registry = registry.with_resource(f"{name}.schema.json", Resource.from_contents(load_schema(name)))
        registry = registry.with_resource(load_schema(name)["$id"], Resource.from_contents(load_schema(name)))
    return registry


@functools.cache
def validator(name: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator  # loaded on first use, not at start-up

    return Draft202012Validator(load_schema(name), registry=_registry())

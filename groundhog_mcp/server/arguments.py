"""Tool arguments: validated strictly, and their errors in the house style.

The SDK validates tool arguments with pydantic in lax mode, after turning JSON text in a string
into an object: ``true`` passes as the integer 1, ``"3"`` and ``2.0`` as 3, ``"yes"`` as true,
and ``"{\\"a\\": 1}"`` as an object. :func:`make_arguments_strict` gives every tool strict
validation instead: each argument must have the JSON type its input schema says, or the call is
refused before the tool runs, with code ``invalid_argument``, the argument, the expected type and
the JSON type given. The input schemas themselves are unchanged.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from groundhog_mcp.models import NAME_PATTERN, SEMVER_PATTERN, json_type

__all__ = [
    "INVALID_ARGUMENT",
    "StrictFuncMetadata",
    "Timestamp",
    "describe_validation_error",
    "first_invalid_field",
    "json_type",
    "make_arguments_strict",
]

INVALID_ARGUMENT = "invalid_argument"
"""The code that starts the text of every argument error (after the SDK's tool prefix)."""

_MAX_ERRORS = 10
_PATTERN_RULES = {
    SEMVER_PATTERN: "must be a semantic version like 1.0.0",
    NAME_PATTERN: f"must match {NAME_PATTERN} (1-128 of A-Z a-z 0-9 . _ -)",
}
# Union members, model names and validator wrappers that pydantic puts in ``loc`` but a caller never wrote.
_NOISE = frozenset({"int", "str", "float", "bool", "dict[str,any]", "list[any]", "none"})
_NOISE_PREFIXES = ("function-after[", "function-before[", "function-plain[", "json-or-python[", "list[", "dict[")
# Pydantic error types that mean "not of the expected JSON type", and that type.
_EXPECTED_TYPE = {
    "int_type": "integer",
    "int_parsing": "integer",
    "int_from_float": "integer",
    "float_type": "number",
    "float_parsing": "number",
    "bool_type": "boolean",
    "bool_parsing": "boolean",
    "string_type": "string",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "dataclass_type": "object",
    "list_type": "array",
    "tuple_type": "array",
    "none_required": "null",
    "datetime_type": "string (an RFC 3339 date-time)",
}


def _only_text(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise PydanticCustomError("datetime_type", "Input should be an RFC 3339 date-time string")
    return value


Timestamp = Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_only_text)]
"""An RFC 3339 date-time argument: JSON has no date type, so this one string is parsed (and
only a string: a number is not taken for seconds since 1970)."""


class StrictFuncMetadata(FuncMetadata):
    """The SDK's tool metadata with strict argument validation and no JSON pre-parsing."""

    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        return self.arg_model.model_validate(arguments_to_validate).model_dump_one_level()

    @classmethod
    def of(cls, metadata: FuncMetadata) -> StrictFuncMetadata:
        return cls(
            arg_model=_strict(metadata.arg_model),
            output_schema=metadata.output_schema,
            output_model=metadata.output_model,
            wrap_output=metadata.wrap_output,
        )


def _strict(model: type[ArgModelBase]) -> type[ArgModelBase]:
    """``model`` with ``strict=True``: no bool for a number, no string for a number or a bool."""

    class Strict(model):  # pyright: ignore[reportGeneralTypeIssues, reportUntypedBaseClass]
        model_config = ConfigDict(strict=True)

    Strict.__name__ = Strict.__qualname__ = model.__name__
    return Strict  # pyright: ignore[reportUnknownVariableType]


def make_arguments_strict(server: MCPServer[Any]) -> None:
    """Validate every registered tool's arguments strictly (call after the tools are added).
    Nested argument models set ``strict=True`` in their own config."""
    for tool in server._tool_manager.list_tools():  # pyright: ignore[reportPrivateUsage]
        if not isinstance(tool.fn_metadata, StrictFuncMetadata):
            tool.fn_metadata = StrictFuncMetadata.of(tool.fn_metadata)


@functools.cache
def _model_names() -> frozenset[str]:
    """Our input models' class names: pydantic puts them in ``loc`` for union members."""
    names: set[str] = set()
    pending: list[type[BaseModel]] = [BaseModel]
    while pending:
        for subclass in pending.pop().__subclasses__():
            pending.append(subclass)
            if subclass.__module__.startswith("groundhog_mcp."):
                names.add(subclass.__name__)
    return frozenset(names)


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        text = str(part)
        lowered = text.replace(" ", "").lower()
        noise = lowered in _NOISE or lowered.startswith(_NOISE_PREFIXES)
        if text in _model_names() or (isinstance(part, str) and noise):
            continue
        parts.append(text)
    return ".".join(parts) or "arguments"


def _describe_input(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return repr(shown)
    if isinstance(value, int | float):
        return repr(value) if len(repr(value)) <= 40 else "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _expected_type(kind: str, value: Any, context: dict[str, Any]) -> str | None:
    """The JSON type expected when this error means "wrong type", else None."""
    if kind == "literal_error" and not isinstance(value, str):
        return f"string ({context.get('expected', 'one of the listed values')})"  # our literals are strings
    if kind == "datetime_type" or (kind in _EXPECTED_TYPE and json_type(value) != _EXPECTED_TYPE[kind]):
        return _EXPECTED_TYPE[kind]
    return None


def first_invalid_field(error: ValidationError) -> str:
    """The argument the first problem is about, as ``describe_validation_error`` names it."""
    problems = error.errors(include_url=False)
    return _location(problems[0]["loc"]) if problems else "arguments"


def describe_validation_error(error: ValidationError) -> str:
    """``invalid_argument: `` and one ``field: rule`` clause per problem, at most ten: for a
    wrong type ``field: expected <JSON type>, got <JSON type>`` (never the value), otherwise
    ``field: rule (got …)``."""
    # In order: ("type", location) for a wrong type (one clause per argument, listing every
    # type a union would have taken), or ("rule", clause) for anything else.
    clauses: list[tuple[str, str]] = []
    expected: dict[str, list[str]] = {}
    given: dict[str, str] = {}
    for item in error.errors(include_url=False):
        where = _location(item["loc"])
        kind = item["type"]
        context = item.get("ctx") or {}
        value = item.get("input")
        wanted = _expected_type(kind, value, context)
        if wanted is not None:
            if where not in expected:
                expected[where], given[where] = [], json_type(value)
                clauses.append(("type", where))
            if wanted not in expected[where]:
                expected[where].append(wanted)
            continue
        if kind == "missing":
            rule = "is required"
        elif kind == "extra_forbidden":
            rule = "is not an accepted field"
        elif kind == "string_pattern_mismatch":
            rule = _PATTERN_RULES.get(str(context.get("pattern")), item["msg"])
        else:
            rule = item["msg"][:1].lower() + item["msg"][1:]
        clause = f"{where}: {rule}"
        if kind not in ("missing", "extra_forbidden"):
            clause += f" (got {_describe_input(value)})"
        if ("rule", clause) not in clauses:
            clauses.append(("rule", clause))
    described = [
        f"{text}: expected {' or '.join(expected[text])}, got {given[text]}" if form == "type" else text
        for form, text in clauses
    ]
    shown = described[:_MAX_ERRORS]
    more = f"; and {len(described) - _MAX_ERRORS} more" if len(described) > _MAX_ERRORS else ""
    return f"{INVALID_ARGUMENT}: " + "; ".join(shown) + more

"""A context's definition (version, metadata, settings, JSON Schema, event handlers): the checks a
definition passes at registration, and changing it later (``update_context``).

A redefinition is a write like any other (the lease, ``expected_revision``, one transaction): a
new revision with op ``redefine`` whose state is the current one, unchanged, so history shows
when the definition changed. A new schema or state format is checked against the current state
first: with ``validate_current`` (the default) a state the new definition would refuse refuses
the change, listing every violation.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from groundhog_mcp.errors import StateValidationError, ValidationIssue
from groundhog_mcp.models import JSONObject
from groundhog_mcp.service.events import parse_handler_specs
from groundhog_mcp.service.expiry import resolve_expiry_settings
from groundhog_mcp.service.migration import StateFormat, format_of
from groundhog_mcp.service.reads import state_issues
from groundhog_mcp.service.search import declared_indexes
from groundhog_mcp.service.validation import (
    Limits,
    check_name,
    check_retention_settings,
    check_schema_definition,
    check_semver,
    inspect_json,
    raise_if_invalid,
)
from groundhog_mcp.service.writes import WriteResult
from groundhog_mcp.store.base import Definition, Mutation, StoredContext

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager

__all__ = ["check_definition", "differences", "update_definition"]


def check_definition(
    limits: Limits,
    *,
    metadata: JSONObject | None = None,
    settings: JSONObject | None = None,
    schema: JSONObject | None = None,
    handlers: JSONObject | None = None,
) -> StateFormat | None:
    """Check the parts of a definition that are given (a worker thread's job: schemas and formats
    come from clients); the state format its settings declare."""
    if metadata is not None:
        raise_if_invalid(inspect_json(metadata, limits), "metadata")
    state_format = None
    if settings is not None:
        raise_if_invalid(inspect_json(settings, limits), "settings")
        check_retention_settings(settings)
        state_format = format_of(settings)  # parsed and checked once per distinct declaration
    if schema is not None:
        raise_if_invalid(inspect_json(schema, limits), "schema")
        check_schema_definition(schema)
    if handlers:
        raise_if_invalid(inspect_json(handlers, limits), "event_handlers")
        parse_handler_specs(handlers)
    return state_format


def differences(
    context: StoredContext,
    *,
    version: str | None = None,
    metadata: JSONObject | None = None,
    settings: JSONObject | None = None,
    schema: JSONObject | None = None,
    handlers: JSONObject | None = None,
) -> list[str]:
    """The parts of a definition given that differ from ``context``'s (as the tools name them)."""
    given: list[tuple[str, Any, Any]] = [
        ("version", version, context.version),
        ("metadata", metadata, context.metadata),
        ("settings", settings, context.settings),
        ("json_schema", schema, context.schema),
        ("event_handlers", handlers, context.handlers),
    ]
    return [field for field, wanted, stored in given if wanted is not None and wanted != stored]


async def update_definition(
    manager: StateManager,
    name: str,
    *,
    expected_revision: int | None = None,
    schema: JSONObject | None = None,
    settings: JSONObject | None = None,
    handlers: JSONObject | None = None,
    metadata: JSONObject | None = None,
    version: str | None = None,
    state_format: str | JSONObject | None = None,
    validate_current: bool = True,
) -> WriteResult:
    """Change the definition of context ``name`` (needs ``admin``): the parts given replace the
    stored ones (``state_format`` goes into the settings). A new revision, op ``redefine``, keeps
    the state as it is; unless ``validate_current`` is False, a current state the new
    definition refuses refuses the change, listing every violation
    (see :mod:`groundhog_mcp.service.definition`)."""
    check_name(name)
    await manager.authorize("admin", name)
    given = {
        "json_schema": schema,
        "settings": settings,
        "event_handlers": handlers,
        "metadata": metadata,
        "version": version,
        "state_format": state_format,
    }
    changed = [field for field, value in given.items() if value is not None]
    if not changed:
        raise StateValidationError(
            [ValidationIssue("", f"give at least one of {', '.join(given)}; got none")], field="update_context"
        )
    if version is not None:
        check_semver(version)
    if settings is not None:
        settings = resolve_expiry_settings(settings)
    await asyncio.to_thread(
        check_definition, manager.limits, metadata=metadata, settings=settings, schema=schema, handlers=handlers
    )
    if settings is not None:  # new settings.search_indexes are created first, as at registration
        await manager.store.ensure_search_indexes(declared_indexes(settings))
    limits = manager.limits

    def redefine(current: StoredContext) -> Mutation:
        new_settings = dict(settings if settings is not None else current.settings)
        if state_format is not None:
            new_settings["state_format"] = state_format
            check_definition(limits, settings=new_settings)
        definition = Definition(
            version=version if version is not None else current.version,
            metadata=metadata if metadata is not None else current.metadata,
            settings=new_settings,
            schema=schema if schema is not None else current.schema,
            handlers=handlers if handlers is not None else current.handlers,
        )
        if validate_current:
            issues = state_issues(current.state, definition.schema, definition.settings, limits)
            if issues:
                raise StateValidationError(
                    [*issues, ValidationIssue("", "refused by the new definition; nothing was changed")],
                    field="state",
                )
        return Mutation(current.state, [], op="redefine", definition=definition)

    return await manager.writer.mutate(
        manager.caller, name, expected_revision, redefine, detail=f"redefines {', '.join(changed)}"
    )

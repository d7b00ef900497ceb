"""The public surface changes only on purpose."""

import groundhog_mcp

EXPECTED = {
    "AccessDeniedError",
    "ChangeBus",
    "CompactedError",
    "ConflictError",
    "Context",
    "ContextConfig",
    "ContextError",
    "ContextId",
    "ContextInfo",
    "ContextMetrics",
    "ContextRegistry",
    "ContextState",
    "ContextTemplate",
    "Event",
    "EventHandler",
    "EventHandlingError",
    "Grant",
    "InitializationError",
    "LeasedError",
    "LimitExceededError",
    "Limits",
    "MergeConflictError",
    "MigrationError",
    "NotFoundError",
    "Principal",
    "SQLiteStore",
    "StateManager",
    "StateUpdateError",
    "StateValidationError",
    "Store",
    "StoreBusyError",
    "WriteResult",
    "__version__",
}


def test_exported_names_are_pinned() -> None:
    assert set(groundhog_mcp.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(groundhog_mcp, name), name


def test_error_tree() -> None:
    g = groundhog_mcp
    for error in (g.InitializationError, g.StateUpdateError, g.EventHandlingError, g.StateValidationError):
        assert issubclass(error, g.ContextError)
    assert issubclass(g.ConflictError, g.StateUpdateError)
    assert issubclass(g.MergeConflictError, g.StateUpdateError)
    assert issubclass(g.MigrationError, g.ContextError)
    assert issubclass(g.CompactedError, g.NotFoundError)
    for error in (g.NotFoundError, g.AccessDeniedError, g.LimitExceededError, g.StoreBusyError, g.LeasedError):
        assert issubclass(error, g.ContextError)


def test_service_layer_never_imports_mcp() -> None:
    import subprocess
    import sys

    code = (
        "import sys, groundhog_mcp, groundhog_mcp.service, groundhog_mcp.store;"
        "bad = [m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

"""Wiring: configuration (flags > GROUNDHOG_* env > TOML), logging, and the server lifespan."""

from __future__ import annotations

import logging
import os
import sys
import tomllib
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import platformdirs
import structlog
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from groundhog_mcp import __version__
from groundhog_mcp.errors import InitializationError
from groundhog_mcp.models import Principal
from groundhog_mcp.server import AppContext, Notifier, build_server
from groundhog_mcp.service import Limits, StateManager
from groundhog_mcp.store import open_store

__all__ = [
    "Settings",
    "configure_logging",
    "create_server",
    "default_config_path",
    "default_database",
    "load_settings",
    "open_manager",
]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def default_database() -> Path:
    return Path(platformdirs.user_data_dir("groundhog-mcp", appauthor=False)) / "groundhog.sqlite"


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("groundhog-mcp", appauthor=False)) / "config.toml"


class Settings(BaseModel):
    """Every setting, with its default. Env: ``GROUNDHOG_<NAME>``; TOML: ``<name> = ...``."""

    model_config = ConfigDict(extra="forbid")

    database: str = Field(default_factory=lambda: str(default_database()))
    log_level: LogLevel = "INFO"
    busy_timeout_ms: int = Field(default=5000, ge=0, le=600_000)
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    max_state_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_depth: int = Field(default=64, ge=2, le=1000)
    max_read_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    principal: str = Field(default="local", min_length=1, max_length=128)
    namespace: str = Field(default="default", pattern=r"^[A-Za-z0-9._-]{1,128}$")

    def limits(self) -> Limits:
        return Limits(
            max_state_bytes=self.max_state_bytes, max_depth=self.max_depth, max_read_bytes=self.max_read_bytes
        )


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Merge TOML, then ``GROUNDHOG_*`` environment variables, then flags (highest wins)."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    path = Path(config_file) if config_file else Path(env["GROUNDHOG_CONFIG"]) if env.get("GROUNDHOG_CONFIG") else None
    if path is None and default_config_path().is_file():
        path = default_config_path()
    if path is not None:
        try:
            merged.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise InitializationError(f"config: file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise InitializationError(f"config: {path} is not valid TOML ({exc})") from None
    for field in Settings.model_fields:
        value = env.get(f"GROUNDHOG_{field.upper()}")
        if value is not None and value != "":
            merged[field] = value
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InitializationError(f"config: {problems}") from None


def configure_logging(level: str = "INFO") -> None:
    """structlog JSON lines on stderr, for our loggers and the SDK's (stdout is the protocol's)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The SDK logs every failed tool call at INFO with its text, which can quote state values;
    # our own tool boundary logs failures without contents. Its bug reports (ERROR) still pass.
    logging.getLogger("mcp.server.mcpserver.server").setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def open_manager(settings: Settings) -> StateManager:
    """A state manager over the configured database (not started yet)."""
    return StateManager(
        open_store(settings.database, busy_timeout_ms=settings.busy_timeout_ms, synchronous=settings.synchronous),
        limits=settings.limits(),
        principal=Principal(name=settings.principal, namespace=settings.namespace),
    )


async def prometheus_text(manager: StateManager, *, open_subscriptions: int = 0) -> str:
    """The Prometheus exposition of ``collect_metrics`` (extra ``[metrics]``: prometheus-client)."""
    try:
        from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
    except ImportError:
        raise InitializationError(
            "metrics: the Prometheus exposition needs prometheus-client; pip install 'groundhog-mcp[metrics]'"
        ) from None
    server, contexts = await manager.collect_metrics(limit=manager.limits.max_page)
    registry = CollectorRegistry()
    labels = ["context"]
    gauges = {
        "revision": Gauge("groundhog_context_revision", "Current revision", labels, registry=registry),
        "state_size": Gauge("groundhog_context_state_bytes", "Serialised state size", labels, registry=registry),
        "dead_letters": Gauge("groundhog_context_dead_letters", "Open dead letters", labels, registry=registry),
        "write_p95": Gauge(
            "groundhog_context_write_p95_seconds", "p95 write latency (this process)", labels, registry=registry
        ),
    }
    updates = Counter("groundhog_context_state_updates", "Committed writes", labels, registry=registry)
    events = Counter("groundhog_context_events_handled", "Events handled", labels, registry=registry)
    for ctx in contexts:
        gauges["revision"].labels(ctx.name).set(ctx.revision)
        gauges["state_size"].labels(ctx.name).set(ctx.state_size)
        gauges["dead_letters"].labels(ctx.name).set(ctx.dead_letters)
        gauges["write_p95"].labels(ctx.name).set(ctx.write_latency.p95_ms / 1000)
        updates.labels(ctx.name).inc(ctx.state_updates)
        events.labels(ctx.name).inc(ctx.event_count)
    Gauge("groundhog_uptime_seconds", "Server uptime", registry=registry).set(server["uptime_seconds"])
    Gauge("groundhog_database_bytes", "Database size", registry=registry).set(server["database_bytes"] or 0)
    Gauge("groundhog_rss_bytes", "Resident memory", registry=registry).set(server["rss_bytes"] or 0)
    Gauge("groundhog_open_subscriptions", "Open resource subscriptions", registry=registry).set(open_subscriptions)
    Gauge("groundhog_last_sequence", "Last change sequence", registry=registry).set(server["last_sequence"])
    errors = Counter("groundhog_errors", "Errors answered to clients", ["error"], registry=registry)
    for error_class, count in server["errors"].items():
        errors.labels(error_class).inc(count)
    return generate_latest(registry).decode()


def create_server(settings: Settings, manager: StateManager | None = None) -> MCPServer[AppContext]:
    """The MCP server. With ``manager`` the caller owns it (already started); otherwise the
    lifespan opens and closes one from ``settings``."""

    @asynccontextmanager
    async def lifespan(
        server: MCPServer[AppContext], subscriptions: InMemorySubscriptionBus
    ) -> AsyncGenerator[AppContext]:
        own = manager is None
        active = open_manager(settings) if manager is None else manager
        if own:
            await active.start()
        notifier = Notifier(active.bus, subscriptions, namespace=active.principal.namespace)
        await notifier.start()
        try:
            yield AppContext(manager=active, notifier=notifier)
        finally:
            await notifier.stop()
            if own:
                await active.close()

    return build_server(lifespan, version=__version__)

"""Wiring: configuration (flags > GROUNDHOG_* env > TOML), logging, and the server lifespan."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tomllib
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import platformdirs
import structlog
from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from groundhog_mcp import __version__
from groundhog_mcp.errors import EncryptionKeyError, InitializationError, StateValidationError
from groundhog_mcp.models import NAMESPACE_PATTERN, Grant, Principal
from groundhog_mcp.profiles import ToolSelection, parse_tools
from groundhog_mcp.security.audit import AuditKey, KeyFileSigner, Signer, key_file_problem, load_or_create_key_file
from groundhog_mcp.security.tokens import TokenStore
from groundhog_mcp.service import Limits, StateManager
from groundhog_mcp.store import Retention, open_store
from groundhog_mcp.store.search import parse_ref

if TYPE_CHECKING:
    # The MCP SDK and the HTTP stack are imported by the functions that serve (create_server,
    # serve_http) only: the maintenance commands load neither (they start ~3x faster).
    from mcp.server.auth.provider import TokenVerifier
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.mcpserver import MCPServer

    from groundhog_mcp.security.crypto import EncryptionKey, Keyring
    from groundhog_mcp.server import AppContext
    from groundhog_mcp.server.http import HttpConfig
    from groundhog_mcp.server.notify import NamespacedSubscriptionBus
    from groundhog_mcp.server.oauth import IntrospectionVerifier

__all__ = [
    "Settings",
    "audit_key",
    "configure_logging",
    "create_server",
    "default_config_path",
    "default_database",
    "default_token_file",
    "encryption_keyring",
    "load_settings",
    "open_manager",
    "serve_http",
]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

log = structlog.get_logger("groundhog_mcp.app")


def default_database() -> Path:
    return Path(platformdirs.user_data_dir("groundhog-mcp", appauthor=False)) / "groundhog.sqlite"


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("groundhog-mcp", appauthor=False)) / "config.toml"


def default_token_file() -> Path:
    return Path(platformdirs.user_config_dir("groundhog-mcp", appauthor=False)) / "tokens.json"


class Settings(BaseSettings):
    """Every setting, with its default. Env: ``GROUNDHOG_<NAME>``; TOML: ``<name> = ...``.

    ``Settings(name=value, ...)`` takes the given values over the defaults and nothing else (a
    library caller's settings do not change with the environment); ``load_settings`` layers
    flags, ``GROUNDHOG_*`` variables and the TOML file.
    """

    # Lists from the environment are comma-separated, not JSON (NoDecode on those fields); an
    # empty variable means "not set", as an unset one.
    model_config = SettingsConfigDict(extra="forbid", env_prefix="GROUNDHOG_", env_ignore_empty=True)

    database: str = Field(
        default_factory=lambda: str(default_database()),
        description="SQLite file (created with its directory; ~ expanded) or postgresql://user@host/db?schema=NAME",
    )
    log_level: LogLevel = Field(default="INFO", description="level of the JSON log lines on stderr")
    busy_timeout_ms: int = Field(
        default=5000, ge=0, le=600_000, description="how long a write waits for another process's lock"
    )
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = Field(default="FULL", description="SQLite PRAGMA synchronous")
    max_state_bytes: int = Field(
        default=1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="largest serialised state"
    )
    max_depth: int = Field(default=64, ge=2, le=1000, description="deepest JSON nesting of a state")
    max_read_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="largest value get_state and state resources return; a larger one is an outline to read by path",
    )
    max_lease_seconds: float = Field(
        default=3600, gt=0, le=7 * 24 * 3600, description="longest lease an agent may take or renew, in seconds"
    )
    max_lease_waiters: int = Field(
        default=32, ge=1, le=10_000, description="most agents waiting in line for one context's lease"
    )
    max_lease_waiters_per_namespace: int = Field(
        default=256, ge=1, le=100_000, description="most agents of one namespace waiting in line for leases"
    )
    keep_revisions: int = Field(default=100, ge=0, description="history revisions kept per context; 0 keeps all")
    keep_days: float | None = Field(default=None, gt=0, description="drop history older than this many days")
    principal: str = Field(
        default="local",
        min_length=1,
        max_length=128,
        description="the local principal, recorded as actor of its writes",
    )
    namespace: str = Field(default="default", pattern=NAMESPACE_PATTERN, description="the local principal's namespace")
    tools: ToolSelection = Field(default="default", description="default, all, or comma-separated tool names")
    # The HTTP transports (docs/http.md). Lists from the environment are comma-separated.
    transport: Literal["stdio", "http", "sse"] = Field(
        default="stdio", description="stdio, http (streamable HTTP at /mcp) or sse (legacy HTTP+SSE at /sse)"
    )
    host: str = Field(default="127.0.0.1", min_length=1, max_length=255, description="HTTP bind address")
    port: int = Field(default=8765, ge=0, le=65535, description="0: any free port (logged at start)")
    search_indexes: Annotated[list[str], NoDecode] = Field(
        default_factory=list[str],
        description="JSON Pointers (/data/..., /context_metadata/...) whose equality and range conditions in "
        "find_contexts use an index (comma-separated)",
    )
    search_budget_ms: int = Field(
        default=2000, ge=10, le=600_000, description="longest a find_contexts query may run (then: code budget)"
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list[str], description="Host headers to accept besides localhost"
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list[str], description="Origin headers to accept"
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="largest HTTP request body (413 above)"
    )
    header_timeout: float = Field(default=10.0, gt=0, le=600, description="seconds for a request's headers to arrive")
    body_timeout: float = Field(default=30.0, gt=0, le=3600, description="seconds for a request's body to arrive")
    max_connections: int = Field(default=512, ge=1, le=100_000, description="HTTP connections served at once")
    credential_recheck: float = Field(
        default=5.0, gt=0, le=3600, description="seconds between checks that an open stream's token is still valid"
    )
    token_file: str = Field(
        default_factory=lambda: str(default_token_file()),
        description="bearer token hashes (tokens create); its existence turns HTTP authentication on",
    )
    insecure_no_auth: bool = Field(
        default=False, description="serve HTTP without tokens even on a non-loopback address"
    )
    # The audit log (docs/security.md "Audit log"): on unless turned off. The key comes from
    # GROUNDHOG_AUDIT_KEY or audit_key_file (never a flag); without either, from a key file beside
    # the SQLite database (created on first use, mode 0600), or in the config dir for PostgreSQL.
    audit: bool = Field(default=True, description="keep the tamper-evident audit log")
    audit_key: SecretStr | None = Field(default=None, description="HMAC key of the audit chain, >= 32 characters")
    audit_key_file: str | None = Field(default=None, description="file holding the audit key (created if missing)")
    # The local principal's grants (stdio, and HTTP without authentication): right:prefix.
    grants: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["admin:"], min_length=1, description="the local principal's grants, RIGHT:PREFIX"
    )
    metrics_public: bool = Field(default=False, description="serve /metrics without a token")
    # The read-only web dashboard (docs/dashboard.md): `groundhog-mcp dashboard`, and /ui on HTTP.
    dashboard_port: int = Field(default=8766, ge=0, le=65535, description="port of `groundhog-mcp dashboard`")
    dashboard_ui: bool = Field(default=True, description="serve the read-only dashboard at /ui on the HTTP transports")
    # OAuth 2.1 resource server (docs/http.md): on when oauth_introspection_url is set. The
    # client secret comes from GROUNDHOG_OAUTH_CLIENT_SECRET or a file, never a flag.
    oauth_issuer_url: str | None = Field(default=None, description="OAuth authorization server (issuer) URL")
    oauth_introspection_url: str | None = Field(
        default=None, description="RFC 7662 token introspection endpoint; setting it turns OAuth on"
    )
    oauth_resource_url: str | None = Field(default=None, description="this server's URL (tokens' aud); default: /mcp")
    oauth_client_id: str | None = Field(default=None, description="client id for introspection")
    oauth_client_secret: str | None = Field(default=None, repr=False, description="client secret for introspection")
    oauth_client_secret_file: str | None = Field(default=None, description="file holding the client secret")
    oauth_namespace_claim: str = Field(
        default="groundhog_namespace", min_length=1, max_length=128, description="token claim naming the namespace"
    )
    oauth_cache_seconds: float = Field(
        default=30.0, ge=0, le=3600, description="seconds an introspection answer is reused"
    )
    # Encryption at rest (docs/security.md "Encryption at rest"). The keys themselves come from the
    # environment or from key files only: never a flag (process arguments are visible to every
    # user), never the TOML file (config files get copied around).
    encryption_key: SecretStr | None = Field(default=None, description="current encryption key (base64url, 32 bytes)")
    encryption_key_file: str | None = Field(default=None, description="file holding the current encryption key")
    encryption_old_keys: SecretStr | None = Field(default=None, description="comma-separated older keys, read only")
    encryption_old_keys_file: str | None = Field(
        default=None, description="file holding older keys, one a line, read only"
    )

    @field_validator("grants")
    @classmethod
    def _valid_grants(cls, value: list[str]) -> list[str]:
        for text in value:
            Grant.parse(text)  # a ValueError names the grant and what is wrong with it
        return value

    def local_principal(self) -> Principal:
        """The principal of stdio and of unauthenticated HTTP requests."""
        return Principal(
            name=self.principal, namespace=self.namespace, grants=tuple(Grant.parse(g) for g in self.grants)
        )

    @field_validator("search_indexes")
    @classmethod
    def _valid_search_indexes(cls, value: list[str]) -> list[str]:
        for pointer in value:
            try:
                parse_ref(pointer, "search_indexes")
            except StateValidationError as exc:
                raise ValueError(str(exc)) from None  # names the pointer and what is wrong with it
        return value

    @field_validator("allowed_hosts", "allowed_origins", "grants", "search_indexes", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def limits(self) -> Limits:
        return Limits(
            max_state_bytes=self.max_state_bytes,
            max_depth=self.max_depth,
            max_read_bytes=self.max_read_bytes,
            max_lease_seconds=self.max_lease_seconds,
            max_lease_waiters=self.max_lease_waiters,
            max_lease_waiters_per_namespace=self.max_lease_waiters_per_namespace,
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class _EnvironmentSource(EnvSettingsSource):
    """``GROUNDHOG_*`` variables of a given mapping (``os.environ`` for the command line)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Flags over ``GROUNDHOG_*`` environment variables over the TOML file over the defaults."""
    env = os.environ if env is None else env
    path = Path(config_file) if config_file else Path(env["GROUNDHOG_CONFIG"]) if env.get("GROUNDHOG_CONFIG") else None
    if path is None and default_config_path().is_file():
        path = default_config_path()
    toml = _read_config(path) if path is not None else {}
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    if any(secret in given for secret in _ENV_ONLY):
        raise EncryptionKeyError("config: encryption keys are never taken from the command line")
    sources = (
        InitSettingsSource(Settings, init_kwargs=given),
        _EnvironmentSource(Settings, env),
        InitSettingsSource(Settings, init_kwargs=toml),
    )
    try:
        # pyright does not see BaseSettings' private __init__ arguments through dataclass_transform.
        return Settings(_build_sources=(sources, {}))  # pyright: ignore[reportCallIssue]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InitializationError(f"config: {problems}") from None


def _read_config(path: Path) -> dict[str, Any]:
    """The TOML file's table; every way it can be wrong is one ``config:`` line naming the file."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InitializationError(f"config: file {path} does not exist") from None
    except OSError as exc:
        raise InitializationError(f"config: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InitializationError(f"config: {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise InitializationError(f"config: {path} is not valid TOML ({exc})") from None
    for secret in _ENV_ONLY:
        if secret in table:
            raise EncryptionKeyError(
                f"config: {path} sets {secret}; keys are not read from the config file. Put the key in a "
                f"file of its own (mode 0600) and set {secret}_file, or set GROUNDHOG_{secret.upper()}"
            )
    return table


_ENV_ONLY = ("encryption_key", "encryption_old_keys")


def encryption_keyring(settings: Settings, *, decrypting: bool = False) -> Keyring | None:
    """The configured encryption keys, or None when encryption at rest is off.

    ``decrypting`` (``rotate-key --decrypt``): every configured key only reads, new values are
    written as plaintext. Otherwise old keys without a current key are refused.
    """
    configured = (
        settings.encryption_key,
        settings.encryption_key_file,
        settings.encryption_old_keys,
        settings.encryption_old_keys_file,
    )
    if not any(configured):
        return None  # without importing the cryptography package (~10 ms of a start)
    from groundhog_mcp.security.crypto import Keyring, parse_key, read_key_file

    current: EncryptionKey | None = None
    if settings.encryption_key is not None and settings.encryption_key_file:
        raise EncryptionKeyError(
            "encryption: both GROUNDHOG_ENCRYPTION_KEY and encryption_key_file are set; set only one"
        )
    if settings.encryption_key is not None:
        current = parse_key(settings.encryption_key.get_secret_value(), source="GROUNDHOG_ENCRYPTION_KEY")
    elif settings.encryption_key_file:
        keys = read_key_file(settings.encryption_key_file, source="encryption_key_file")
        if len(keys) != 1:
            raise EncryptionKeyError(
                f"encryption: encryption_key_file {settings.encryption_key_file} must hold exactly one key; "
                f"it holds {len(keys)} (old keys go in encryption_old_keys_file)"
            )
        current = keys[0]
    old: list[EncryptionKey] = []
    if settings.encryption_old_keys is not None:
        items = [item for item in settings.encryption_old_keys.get_secret_value().split(",") if item.strip()]
        for number, item in enumerate(items, start=1):
            old.append(parse_key(item, source=f"GROUNDHOG_ENCRYPTION_OLD_KEYS item {number}"))
    if settings.encryption_old_keys_file:
        old.extend(read_key_file(settings.encryption_old_keys_file, source="encryption_old_keys_file"))
    if current is None and not old:
        return None
    if decrypting:
        return Keyring(None, [*old, *([current] if current is not None else [])])
    if current is None:
        raise EncryptionKeyError(
            "encryption: old keys are configured (GROUNDHOG_ENCRYPTION_OLD_KEYS / encryption_old_keys_file) but "
            "no current key; set GROUNDHOG_ENCRYPTION_KEY or encryption_key_file (to turn encryption off, run "
            "`groundhog-mcp rotate-key --decrypt` first)"
        )
    return Keyring(current, old)


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
                # Tracebacks without frame locals: those would quote state contents into the log.
                structlog.processors.ExceptionRenderer(
                    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
                ),
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


def default_audit_key_file(database: str) -> Path:
    """Beside a SQLite file (``groundhog.sqlite.audit-key``); for PostgreSQL, in the config dir
    (several machines on one database must share a key: configure it explicitly there)."""
    if database.startswith(("postgresql://", "postgres://")):
        return Path(platformdirs.user_config_dir("groundhog-mcp", appauthor=False)) / "audit-key"
    path = Path(database).expanduser()
    return path.with_name(path.name + ".audit-key")


def audit_key(settings: Settings, *, create: bool = True) -> Signer | None:
    """The audit chain's key, or None when the audit log is turned off (``audit = false``).

    A missing key file is created at the first audited write (``create``), or refused."""
    if not settings.audit:
        return None
    if settings.audit_key is not None:
        return AuditKey(settings.audit_key.get_secret_value())
    path = Path(settings.audit_key_file).expanduser() if settings.audit_key_file else None
    path = path or default_audit_key_file(settings.database)
    if not path.exists():
        if not create:
            raise InitializationError(
                f"audit: no audit key: {path} does not exist (set GROUNDHOG_AUDIT_KEY or audit_key_file)"
            )
        return KeyFileSigner(path)
    key, _ = load_or_create_key_file(path)
    problem = key_file_problem(path)
    if problem:
        log.warning(problem)
    return key


def open_manager(settings: Settings) -> StateManager:
    """A state manager over the configured database (not started yet)."""
    keyring = encryption_keyring(settings)
    if keyring is not None:
        log.info("encryption at rest is on", key_id=keyring.key_id, readable_key_ids=sorted(keyring.readable_key_ids))
    return StateManager(
        open_store(
            settings.database,
            busy_timeout_ms=settings.busy_timeout_ms,
            synchronous=settings.synchronous,
            retention=Retention(keep_revisions=settings.keep_revisions, keep_days=settings.keep_days),
            audit_signer=audit_key(settings),
            cipher=keyring,
            search_indexes=tuple(settings.search_indexes),
            search_budget_ms=settings.search_budget_ms,
        ),
        limits=settings.limits(),
        principal=settings.local_principal(),
    )


async def prometheus_text(manager: StateManager, *, open_subscriptions: int = 0) -> str:
    """The Prometheus exposition of ``collect_metrics`` (extra ``[metrics]``: prometheus-client)."""
    try:
        from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
    except ImportError:
        raise InitializationError(
            "metrics: the Prometheus exposition needs prometheus-client; pip install 'groundhog-context-mcp[metrics]'"
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
    denied = Counter(
        "groundhog_denied_requests",
        "Requests refused for a missing grant",
        ["principal", "operation"],
        registry=registry,
    )
    for principal, operations in server["denied_requests"].items():
        for operation, count in operations.items():
            denied.labels(principal, operation).inc(count)
    return generate_latest(registry).decode()


def dashboard_audit_key(settings: Settings) -> Signer | None:
    """The key the dashboard verifies the audit chain with (None: audit off, or no key yet)."""
    try:
        return audit_key(settings, create=False)
    except InitializationError:
        return None


async def serve_dashboard(settings: Settings) -> None:
    """``groundhog-mcp dashboard``: the read-only dashboard on ``host:dashboard_port`` until
    SIGTERM/SIGINT, signing browsers in with the token file's tokens (as the HTTP transports)."""
    from groundhog_mcp.dashboard import DashboardConfig, TokenFileAccess, dashboard_app
    from groundhog_mcp.dashboard.serve import serve_until_stopped
    from groundhog_mcp.security.hosts import (
        allowed_hosts,
        authority,
        bind_socket,
        is_loopback,
        is_unspecified,
        origins_of,
    )

    tokens = TokenStore(settings.token_file)
    authenticated = not settings.insecure_no_auth and await asyncio.to_thread(tokens.exists)
    if not authenticated and not settings.insecure_no_auth and not is_loopback(settings.host):
        raise InitializationError(
            f"refusing to serve the dashboard on {settings.host} without sign-in: create a token "
            "(groundhog-mcp tokens create --principal NAME), bind 127.0.0.1, or pass --insecure-no-auth"
        )
    sock = bind_socket(settings.host, settings.dashboard_port)
    try:
        port = sock.getsockname()[1]
        hosts = allowed_hosts(settings.host, port, settings.allowed_hosts)
        manager = open_manager(settings)
        await manager.start()
        try:
            local = settings.local_principal()

            async def everyone(token: str | None) -> Principal:
                return local

            config = DashboardConfig(
                secure_cookies=not is_loopback(settings.host),
                hosts=hosts,
                origins=[*origins_of(hosts), *settings.allowed_origins],
                audit_key=dashboard_audit_key(settings),
            )
            access = (
                everyone if settings.insecure_no_auth else TokenFileAccess(tokens, None if authenticated else local)
            )
            shown = "127.0.0.1" if is_unspecified(settings.host) else settings.host

            def announce() -> None:  # once SIGTERM stops it gracefully
                url = f"http://{authority(shown, port)}/"
                log.info("serving", app="dashboard", url=url, port=port, sign_in=authenticated)

            await serve_until_stopped(dashboard_app(manager, access, config), sock, config.stopping, announce)
        finally:
            await manager.close()
            log.info("dashboard stopped")
    finally:
        sock.close()


def create_server(
    settings: Settings,
    manager: StateManager | None = None,
    *,
    token_verifier: TokenVerifier | None = None,
    auth: AuthSettings | None = None,
) -> MCPServer[AppContext]:
    """The MCP server. With ``manager`` the caller owns it (already started); otherwise the
    lifespan opens and closes one from ``settings``. With ``token_verifier`` and ``auth`` (HTTP
    only) every request needs a bearer token and runs as the token's principal."""
    from groundhog_mcp.server import AppContext, Notifier, build_server

    # The legacy SSE transport enters the lifespan once per connection (streamable HTTP once
    # per app): every entry shares one AppContext, so there is one notifier, and a change is
    # announced once on the shared subscription bus, however many clients are connected.
    shared: list[AppContext] = []
    entries = 0
    entering = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(
        server: MCPServer[AppContext], subscriptions: NamespacedSubscriptionBus
    ) -> AsyncGenerator[AppContext]:
        nonlocal entries
        async with entering:
            if not shared:
                active = open_manager(settings) if manager is None else manager
                if manager is None:
                    await active.start()
                notifier = Notifier(active.bus, subscriptions, principal=active.principal)
                await notifier.start()
                shared.append(AppContext(manager=active, notifier=notifier, authenticated=token_verifier is not None))
            entries += 1
        try:
            yield shared[0]
        finally:
            async with entering:
                entries -= 1
                if entries == 0:
                    app = shared.pop()
                    await app.notifier.stop()
                    if manager is None:
                        await app.manager.close()

    return build_server(
        lifespan, version=__version__, token_verifier=token_verifier, auth=auth, tools=parse_tools(settings.tools)
    )


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _read_text(path: str) -> str:
    return Path(path).expanduser().read_text(encoding="utf-8")


async def _oauth(settings: Settings, config: HttpConfig) -> tuple[IntrospectionVerifier, AuthSettings]:
    """The OAuth resource-server pair: tokens checked at the introspection endpoint."""
    from mcp.server.auth.settings import AuthSettings

    from groundhog_mcp.server.oauth import IntrospectionConfig, IntrospectionVerifier

    if not settings.oauth_issuer_url:
        raise InitializationError("oauth_issuer_url: required with oauth_introspection_url (the authorization server)")
    assert settings.oauth_introspection_url is not None
    secret = settings.oauth_client_secret
    if settings.oauth_client_secret_file:
        try:
            text = await asyncio.to_thread(_read_text, settings.oauth_client_secret_file)
        except OSError as exc:
            raise InitializationError(
                f"oauth_client_secret_file: cannot read {settings.oauth_client_secret_file} ({exc.strerror or exc})"
            ) from None
        secret = text.strip()
    if settings.oauth_client_id and not secret:
        raise InitializationError(
            "oauth_client_secret: oauth_client_id is set but no secret (GROUNDHOG_OAUTH_CLIENT_SECRET or "
            "oauth_client_secret_file)"
        )
    resource = settings.oauth_resource_url or config.url
    try:
        auth = AuthSettings(
            issuer_url=AnyHttpUrl(settings.oauth_issuer_url),
            resource_server_url=AnyHttpUrl(resource),
            # The verifier checks the audience itself (aud against the resource URL).
            validate_token_resource=False,
        )
    except ValidationError as exc:
        raise InitializationError(f"oauth: {exc.errors()[0]['msg']} (issuer or resource URL)") from None
    verifier = IntrospectionVerifier(
        IntrospectionConfig(
            issuer_url=settings.oauth_issuer_url,
            introspection_url=settings.oauth_introspection_url,
            resource_url=resource,
            client_id=settings.oauth_client_id,
            client_secret=secret,
            namespace_claim=settings.oauth_namespace_claim,
            cache_seconds=settings.oauth_cache_seconds,
        )
    )
    return verifier, auth


async def serve_http(settings: Settings) -> None:
    """Serve ``settings.transport`` (``http`` or ``sse``) until SIGTERM/SIGINT.

    Stopping: uvicorn stops accepting, event streams end, requests in flight get a bounded
    time to finish; then the state manager closes, which waits for every write already handed
    to the store, so nothing is left half-written.
    """
    from groundhog_mcp.server.http import (
        UI_PATH,
        HttpConfig,
        HttpServer,
        add_metrics_route,
        bind_socket,
        is_loopback,
        refuse_unauthenticated_bind,
        token_auth,
        verifier_access,
    )

    transport: Literal["http", "sse"] = "sse" if settings.transport == "sse" else "http"
    store = TokenStore(settings.token_file)
    oauth = settings.oauth_introspection_url is not None and not settings.insecure_no_auth
    authenticated = oauth or (not settings.insecure_no_auth and await asyncio.to_thread(store.exists))
    wanted = HttpConfig(
        transport=transport,
        host=settings.host,
        port=settings.port,
        allowed_hosts=tuple(settings.allowed_hosts),
        allowed_origins=tuple(settings.allowed_origins),
        max_body_bytes=settings.max_body_bytes,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_connections=settings.max_connections,
        credential_recheck=settings.credential_recheck,
    )
    refuse_unauthenticated_bind(wanted, authenticated=authenticated, insecure_no_auth=settings.insecure_no_auth)
    if oauth and not settings.oauth_issuer_url:  # before the port and the database are touched
        raise InitializationError("oauth_issuer_url: required with oauth_introspection_url (the authorization server)")
    if settings.insecure_no_auth:
        log.warning(
            "authentication is OFF (insecure_no_auth): requests are not checked for a bearer token",
            token_file_ignored=await asyncio.to_thread(store.exists),
        )
    elif oauth:
        log.info(
            "bearer tokens are checked by OAuth token introspection",
            introspection_url=settings.oauth_introspection_url,
            token_file_ignored=await asyncio.to_thread(store.exists),
        )
    elif authenticated:
        tokens = await asyncio.to_thread(store.list)
        if not any(not t.revoked for t in tokens):
            log.warning(
                "the token file holds no active token: every request will be refused", token_file=str(store.path)
            )
        problem = await asyncio.to_thread(store.permission_problem)
        if problem:
            log.warning(problem)
    else:
        log.info(
            "no token file: requests are not authenticated (loopback only) until one is created",
            token_file=str(store.path),
        )
    sock = bind_socket(settings.host, settings.port)
    loop = asyncio.get_running_loop()
    http: HttpServer | None = None
    try:
        config = replace(wanted, port=sock.getsockname()[1])
        manager = open_manager(settings)
        await manager.start()
        try:
            verifier: TokenVerifier | None = None
            auth: AuthSettings | None = None
            if oauth:
                verifier, auth = await _oauth(settings, config)
            elif not settings.insecure_no_auth:
                # Without a token file yet (loopback only: refused above otherwise), requests run as
                # the local principal until the first token is created; from then on they need one.
                anonymous = None if authenticated else settings.local_principal()
                verifier, auth = token_auth(store, config, anonymous)
            server = create_server(settings, manager, token_verifier=verifier, auth=auth)

            async def render_metrics(principal: Principal | None) -> str:
                viewer = manager if principal is None else manager.with_principal(principal)
                return await prometheus_text(viewer)

            add_metrics_route(server, render_metrics, verifier=verifier, public=settings.metrics_public)
            ui = None
            if settings.dashboard_ui:
                from groundhog_mcp.dashboard import DashboardConfig, dashboard_app

                ui = dashboard_app(
                    manager,
                    verifier_access(verifier, settings.local_principal()),
                    DashboardConfig(
                        base=UI_PATH,
                        secure_cookies=not is_loopback(config.host),
                        audit_key=dashboard_audit_key(settings),
                    ),
                )
            http = HttpServer(server, config, verifier, ui=ui)
            for signum in _STOP_SIGNALS:
                loop.add_signal_handler(signum, http.stop)
            log.info(
                "serving",
                transport=transport,
                url=config.url,
                port=config.port,
                authenticated=authenticated,
                database=(await manager.store.status()).location,  # a URL without its password
                version=__version__,
            )
            await http.serve(sock)
        finally:
            # The handlers stay until the writes have committed: a signal now changes nothing.
            await manager.close()
            log.info("stopped", signal=http is not None and http.stopping.is_set())
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        sock.close()

"""Dashboard fixtures: a started, audited state manager on SQLite and on PostgreSQL, and an
in-process HTTP client of the dashboard app signed in as a principal of the test's choice."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx2
import pytest
from starlette.types import ASGIApp

from groundhog_mcp import StateManager
from groundhog_mcp.dashboard import DashboardConfig, dashboard_app
from groundhog_mcp.models import Principal
from groundhog_mcp.security.audit import AuditKey
from tests.conformance.conftest import Backend, MakeBackend, make_backend

__all__ = ["AUDIT_KEY", "Site", "backend", "make_backend", "site"]

AUDIT_KEY = AuditKey("dashboard-test-audit-key-" + "k" * 20)


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, make_backend: MakeBackend) -> Backend:
    # ``site`` opens a store on it first: a PostgreSQL schema may come migrated already
    # (tests/conformance/migrated_schemas.py).
    return await make_backend(request.param, migrated="site" in request.fixturenames)


@dataclass
class Site:
    """The dashboard over ``manager``; ``tokens`` maps a bearer token to its principal."""

    manager: StateManager
    tokens: dict[str, Principal]
    config: DashboardConfig

    async def authenticate(self, token: str | None) -> Principal | None:
        return None if token is None else self.tokens.get(token)

    app: ASGIApp | None = None

    def client(self, *, host: str = "127.0.0.1") -> httpx2.AsyncClient:
        if self.app is None:  # one app, so one set of sessions, for every client of the site
            self.app = dashboard_app(self.manager, self.authenticate, self.config)
        return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=self.app), base_url=f"http://{host}")

    @asynccontextmanager
    async def signed_in(self, token: str) -> AsyncGenerator[httpx2.AsyncClient]:
        async with self.client() as client:
            answer = await client.post("/login", data={"token": token})
            assert answer.status_code == 303, answer.text
            yield client


@pytest.fixture
async def site(backend: Backend) -> AsyncGenerator[Site]:
    manager = StateManager(backend.store(audit_signer=AUDIT_KEY))
    await manager.start()
    try:
        yield Site(manager, {}, DashboardConfig(audit_key=AUDIT_KEY))
    finally:
        await manager.close()

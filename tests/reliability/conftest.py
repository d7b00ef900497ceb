"""Fixtures for the reliability battery: a private database file and server environment per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.harness import server_env


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: the crash, contention, fuzz and fault battery (tests/reliability)")


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A SQLite file that does not exist yet; the server creates it."""
    return tmp_path / "groundhog.sqlite"


@pytest.fixture
def sdk_env(tmp_path: Path) -> dict[str, str]:
    """Extra environment for ``StdioServerParameters`` (the SDK adds PATH, HOME, ...)."""
    return server_env(tmp_path / "home")


@pytest.fixture
def raw_env(tmp_path: Path) -> dict[str, str]:
    """The full environment for a server started with ``asyncio.create_subprocess_exec``."""
    return server_env(tmp_path / "home", os.environ)

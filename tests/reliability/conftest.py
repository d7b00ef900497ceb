"""Fixtures for the reliability battery: a private database file and server environment per test."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import database, raw_env, sdk_env  # noqa: F401 - the same fixtures as the e2e tests


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: the crash, contention, fuzz and fault battery (tests/reliability)")

"""Fixtures for the reliability battery: a private database file and server environment per test,
and the ``broken_build`` marker (tests/reliability/broken_plugin.py)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import database, raw_env, sdk_env  # noqa: F401 - the same fixtures as the e2e tests
from tests.reliability.broken_plugin import (  # noqa: F401 - hooks and fixture of the broken_build marker
    build,
    pytest_generate_tests,
    pytest_runtest_call,
)
from tests.reliability.broken_plugin import pytest_configure as _configure_broken_build


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: the crash, contention, fuzz and fault battery (tests/reliability)")
    _configure_broken_build(config)

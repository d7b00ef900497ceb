"""The backend fixtures of the conformance suite: audit tests run on SQLite and PostgreSQL."""

from tests.conformance.conftest import backend, make_backend

__all__ = ["backend", "make_backend"]

"""The backend factory of the conformance suite: access tests run on SQLite and PostgreSQL."""

from tests.conformance.conftest import make_backend

__all__ = ["make_backend"]

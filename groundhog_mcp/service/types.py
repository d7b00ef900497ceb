"""The store's record types the layers above the service see, re-exported: the server and the
person-facing CLI commands import them from here, never from :mod:`groundhog_mcp.store`."""

from groundhog_mcp.store.base import AuditRecord, DeadLetter, Lease, LeaseGrant, StoredContext

__all__ = ["AuditRecord", "DeadLetter", "Lease", "LeaseGrant", "StoredContext"]

"""Security: principals and access (stdio runs as one local principal with all rights).

Bearer tokens for the HTTP transports live in :mod:`groundhog_mcp.security.tokens`. Grants,
encryption at rest and the audit log land here too (see the security issue).
"""

from groundhog_mcp.security.tokens import TokenRecord, TokenStore

__all__ = ["TokenRecord", "TokenStore"]

"""Security: principals and access (stdio runs as one local principal with all rights).

Grants, tokens, encryption at rest and the audit log land here (see the security issue).
"""

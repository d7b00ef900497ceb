#!/usr/bin/env python3
"""Check a server.json against the MCP Registry's schema (vendored in packaging/registry/).

Besides the schema: the ``$schema`` URL is the vendored schema's ``$id``, and every package's
``version`` equals the server's. Used by tests/test_packaging.py (the repository's server.json)
and .ci/bundle-check (the one build_bundle.py writes for publication).
Usage: python packaging/check_server_json.py FILE [FILE ...]   (exit 1 on any problem)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator, FormatChecker

SCHEMA_PATH = Path(__file__).resolve().parent / "registry" / "server.schema.json"


def problems(entry: dict[str, Any]) -> list[str]:
    """What is wrong with ``entry``; empty when it is a valid registry entry."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = Draft7Validator(schema, format_checker=FormatChecker())
    found = [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(entry), key=lambda error: list(map(str, error.absolute_path)))
    ]
    if entry.get("$schema") != schema["$id"]:
        found.append(f"$schema: {entry.get('$schema')!r} is not the vendored schema {schema['$id']!r}")
    for number, package in enumerate(entry.get("packages", [])):
        if "version" in package and package["version"] != entry.get("version"):
            found.append(
                f"packages/{number}/version: {package['version']!r} differs from version {entry.get('version')!r}"
            )
    return found


def main(paths: list[str]) -> int:
    failed = False
    for path in paths:
        found = problems(json.loads(Path(path).read_text(encoding="utf-8")))
        for problem in found:
            print(f"{path}: {problem}", file=sys.stderr)
        failed = failed or bool(found)
        if not found:
            print(f"{path}: valid against {SCHEMA_PATH.name} ({json.loads(SCHEMA_PATH.read_text())['$id']})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Refresh tests/durations.json, the per-test seconds tests/conftest.py orders the suite by.

    python -m pytest -q -p no:cacheprovider -n 2 --junitxml=/tmp/run.xml tests
    python -m tests.durations /tmp/run.xml [--scale 0.25]

Keeps the tests that took ``MIN_SECONDS`` or more (setup, call and teardown together, as the JUnit
report counts them). ``--scale`` multiplies every figure: a run on a loaded machine is slower than
CI, but only the order of the figures matters, so a scale is cosmetic.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path

MIN_SECONDS = 0.5
ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "tests" / "durations.json"


def node_id(classname: str, name: str) -> str:
    """``tests.reliability.test_faults`` + ``test_x[p]`` -> ``tests/reliability/test_faults.py::test_x[p]``."""
    parts = classname.split(".")
    for split in range(len(parts), 0, -1):
        module = "/".join(parts[:split]) + ".py"
        if (ROOT / module).is_file():
            return "::".join([module, *parts[split:], name])
    raise ValueError(f"no test file for {classname}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("junit_xml", type=Path)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    seconds: dict[str, float] = {}
    for case in ET.parse(args.junit_xml).iter("testcase"):
        took = float(case.get("time", 0)) * args.scale
        if took >= MIN_SECONDS:
            seconds[node_id(case.get("classname", ""), case.get("name", ""))] = round(took, 1)
    OUTPUT.write_text(json.dumps(dict(sorted(seconds.items())), indent=0) + "\n", encoding="utf-8")
    print(f"{OUTPUT.relative_to(ROOT)}: {len(seconds)} tests of {MIN_SECONDS} s or more")


if __name__ == "__main__":
    main()

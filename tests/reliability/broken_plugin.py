"""The ``broken_build`` marker: run a test again against a deliberately broken variant, and require it to fail.

::

    @pytest.mark.broken_build("no_cas", match=r"lost update")
    async def test_four_processes_lose_no_update(...): ...

collects two items, ``[real]`` and ``[broken-no_cas]``. The second runs the same test body with
the defect planted (tests/reliability/broken_build.py: ``GROUNDHOG_E2E_COMMAND`` points at a
broken copy of the package, and in-process defects are monkeypatched in) and passes only if the
test FAILS with an exception of type ``fails_with`` (default ``AssertionError``) whose text
matches ``match``: failing somewhere else (a timeout, a setup error) is not proof that the check
works. A Hypothesis test is run derandomized, without shrinking, within ``BROKEN_EXAMPLES``.

A test reads the ``build`` fixture (:class:`Build`) to keep its broken run short. At the end of
the session the terminal summary lists every test and defect seen failing.

Tests elsewhere use it by importing these names into their directory's ``conftest.py``:
``from tests.reliability.broken_plugin import build, pytest_configure, pytest_generate_tests,
pytest_runtest_call, pytest_runtest_logreport, pytest_terminal_summary  # noqa: F401``. A defect not in
``broken_build.DEFECTS`` can be passed as a :class:`~tests.reliability.broken_build.Defect`.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.broken_build import DEFECTS, Defect, apply_in_process
from tests.reliability.broken_build import build as build_copy

__all__ = [
    "BROKEN_EXAMPLES",
    "Build",
    "build",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_runtest_call",
    "pytest_runtest_logreport",
    "pytest_terminal_summary",
]

BROKEN_EXAMPLES = 200  # Hypothesis examples allowed to find a planted defect
_CAUGHT: list[tuple[str, str, str]] = []  # (test, defect, first line of the failure)


@dataclass(frozen=True)
class Variant:
    defect: Defect
    fails_with: type[BaseException]
    match: str

    @property
    def id(self) -> str:
        return f"broken-{self.defect.name}"


@dataclass(frozen=True)
class Build:
    """What the test runs against: the real package, or a variant carrying ``defect``."""

    defect: Defect | None = None

    @property
    def broken(self) -> bool:
        return self.defect is not None


def _variants(markers: list[pytest.Mark]) -> list[Variant]:
    variants: list[Variant] = []
    for mark in markers:
        (defect,) = mark.args
        variants.append(
            Variant(
                DEFECTS[defect] if isinstance(defect, str) else defect,
                mark.kwargs.get("fails_with", AssertionError),
                mark.kwargs.get("match", ""),
            )
        )
    return variants


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "broken_build(defect, fails_with=AssertionError, match=''): also run the test against a broken "
        "variant (tests/reliability/broken_build.py) and require it to fail there",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    variants = _variants(list(metafunc.definition.iter_markers("broken_build")))
    if variants and "build" in metafunc.fixturenames:
        metafunc.parametrize("build", [None, *variants], ids=["real", *(v.id for v in variants)], indirect=True)


_copies: dict[str, Path] = {}


@pytest.fixture(autouse=True)
def build(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Build:
    """The build under test; for a ``broken_build`` variant, the defect is planted for this test only."""
    variant: Variant | None = getattr(request, "param", None)
    if variant is None:
        return Build()
    defect = variant.defect
    if defect.name not in _copies:
        _copies[defect.name] = build_copy(defect, tmp_path_factory.mktemp(f"broken-{defect.name}"))
    monkeypatch.setenv("GROUNDHOG_E2E_COMMAND", str(_copies[defect.name]))
    if defect.in_process:
        apply_in_process(defect, monkeypatch)
    return Build(defect)


def _variant_of(item: pytest.Item) -> Variant | None:
    callspec = getattr(item, "callspec", None)
    param = callspec.params.get("build") if callspec is not None else None
    return param if isinstance(param, Variant) else None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _shorten_hypothesis(function: Any) -> Any:
    """Derandomized, no shrinking, at most BROKEN_EXAMPLES: a short, repeatable broken run."""
    from hypothesis import Phase, settings

    current = getattr(function, "_hypothesis_internal_use_settings", None)
    if current is None:
        return None
    function._hypothesis_internal_use_settings = settings(
        current,
        max_examples=min(current.max_examples, BROKEN_EXAMPLES),
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
    )
    return current


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    variant = _variant_of(item)
    if variant is None:
        return (yield)
    function = getattr(item, "obj", None)
    saved = _shorten_hypothesis(function)
    try:
        yield
    except BaseException as exc:
        matching = [
            leaf
            for leaf in _leaves(exc)
            if isinstance(leaf, variant.fails_with) and re.search(variant.match, str(leaf), re.DOTALL)
        ]
        if not matching:
            if not isinstance(exc, Exception):
                raise  # a skip, an interrupt
            raise AssertionError(
                f"against the broken build {variant.defect.name!r} ({variant.defect.summary}) the test failed, "
                f"but not with {variant.fails_with.__name__} matching {variant.match!r}: "
                f"{type(exc).__name__}: {str(exc)[:1500]}"
            ) from exc
        lines = str(matching[0]).strip().splitlines() or [type(matching[0]).__name__]
        first = next((line for line in lines if re.search(variant.match, line)), lines[0])[:200]
        item.user_properties.append(("broken_build_caught", (variant.defect.name, first)))
        return None
    finally:
        if saved is not None:
            function._hypothesis_internal_use_settings = saved
    raise AssertionError(
        f"the test passed against the broken build {variant.defect.name!r} ({variant.defect.summary}): "
        "it cannot catch that defect"
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # From the report, not the item: under pytest-xdist the items run in workers.
    for key, value in report.user_properties:
        if key == "broken_build_caught" and report.when == "call" and report.passed:
            defect, first = value
            test = report.nodeid.replace(f"broken-{defect}-", "").replace(f"-broken-{defect}", "")
            _CAUGHT.append((test.replace(f"[broken-{defect}]", ""), defect, first))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _CAUGHT:
        return
    terminalreporter.section("broken builds caught (tests/reliability/broken_plugin.py)")
    for test, defect, first in _CAUGHT:
        terminalreporter.write_line(f"{test} x {defect}: {first}")

"""The package as installed: which core is active, and that CI tests the compiled one."""

from __future__ import annotations

import pytest
from support import CI, cli

from pytcpecho import __version__
from pytcpecho import core as cores


def test_ci_tests_the_cython_core() -> None:
    if not CI:
        pytest.skip("only enforced with CI=true")
    assert cores.cython_available(), "the Cython extension did not build"
    assert cores.default.NAME == "cython"


def test_version_names_the_active_core() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"pytcpecho {__version__} (core: {cores.default.NAME})"


def test_pure_python_switch() -> None:
    result = cli("--version", env={"PYTCPECHO_PURE_PYTHON": "1"})
    assert result.stdout.strip().endswith("(core: python)")

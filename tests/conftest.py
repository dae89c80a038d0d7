"""Fixtures: every core-dependent test runs on each core; with CI=true none may be skipped."""

from __future__ import annotations

import pytest
from support import CI

from pytcpecho import core as cores


@pytest.fixture(params=["cython", "python"])
def core(request: pytest.FixtureRequest) -> str:
    """The name of a core to test; the Cython one must exist in CI."""
    name: str = request.param
    if name == "cython" and not cores.cython_available():
        if CI:
            pytest.fail("the Cython core did not build, and CI must test it")
        pytest.skip("the Cython core is not built here")
    return name


@pytest.fixture(params=["stream", "message"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)

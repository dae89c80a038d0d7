"""Fixtures: every core-dependent test runs on each core; with CI=true none may be skipped."""

from __future__ import annotations

import pytest
from support import require_cython


@pytest.fixture(params=["cython", "python"])
def core(request: pytest.FixtureRequest) -> str:
    """The name of a core to test; the Cython one must exist in CI."""
    name: str = request.param
    if name == "cython":
        require_cython()
    return name


@pytest.fixture(params=["stream", "message"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)

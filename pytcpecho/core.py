"""Chooses the core: the Cython extension when it is built, else pure Python.

One switch, as in msgpack-python: ``PYTCPECHO_PURE_PYTHON=1`` forces the
pure-Python core; otherwise the compiled ``pytcpecho._core`` is used when it
imports.  Servers and clients may also ask for a core by name.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from . import _pycore

CORES = ("auto", "cython", "python", "splice")

_cython: ModuleType | None
try:
    _cython = importlib.import_module("pytcpecho._core")
except ImportError:
    _cython = None


def cython_available() -> bool:
    """Whether the compiled core was built and imports."""
    return _cython is not None


def _default() -> ModuleType:
    if os.environ.get("PYTCPECHO_PURE_PYTHON", "") not in ("", "0") or _cython is None:
        return _pycore
    return _cython


def splice_available() -> bool:
    """Whether the splice core can run: the compiled core on Linux."""
    return _cython is not None and hasattr(_cython, "SpliceSession") and sys.platform == "linux"


def load(name: str = "auto") -> ModuleType:
    """The core module for ``name`` ("auto", "cython", "python" or "splice")."""
    if name == "auto":
        return _default()
    if name == "python":
        return _pycore
    if name == "cython":
        if _cython is None:
            raise RuntimeError("the Cython core is not built: reinstall with a C compiler "
                               "(pip install .) or use --core python")
        return _cython
    if name == "splice":
        if not splice_available():
            raise RuntimeError("the splice core needs Linux and the built Cython core: "
                               "use --core cython or python")
        return importlib.import_module("pytcpecho._splicecore")
    raise ValueError(f"unknown core {name!r}: choose from {', '.join(CORES)}")


default = _default()

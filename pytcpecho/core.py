"""Chooses the core: the Cython extension when it is built, else pure Python.

One switch, as in msgpack-python: ``PYTCPECHO_PURE_PYTHON=1`` forces the
pure-Python core; otherwise the compiled ``pytcpecho._core`` is used when it
imports.  Servers and clients may also ask for a core by name.  Every core is
checked against the core contract (``pytcpecho.contract``) when it is loaded,
so one that lacks a name fails here, in one line, not mid-connection.
"""

from __future__ import annotations

import os
import sys

from . import _pycore
from .contract import Core, check_core

CORES = ("auto", "cython", "python", "splice")

_python: Core = _pycore
_cython: Core | None
try:
    from . import _core
except ImportError:
    _cython = None
else:
    _cython = _core
_checked: dict[str, Core] = {"python": check_core(_python, "python")}
if _cython is not None:
    _checked["cython"] = check_core(_cython, "cython")


def cython_available() -> bool:
    """Whether the compiled core was built and imports."""
    return _cython is not None


def _default() -> Core:
    if os.environ.get("PYTCPECHO_PURE_PYTHON", "") not in ("", "0") or _cython is None:
        return _checked["python"]
    return _checked["cython"]


def splice_available() -> bool:
    """Whether the splice core can run: the compiled core on Linux."""
    return _cython is not None and hasattr(_cython, "SpliceSession") and sys.platform == "linux"


def load(name: str = "auto") -> Core:
    """The core module for ``name`` ("auto", "cython", "python" or "splice")."""
    if name == "auto":
        return _default()
    if name in _checked:
        return _checked[name]
    if name == "cython":
        raise RuntimeError("the Cython core is not built: reinstall with a C compiler "
                           "(pip install .) or use --core python")
    if name == "splice":
        if not splice_available():
            raise RuntimeError("the splice core needs Linux and the built Cython core: "
                               "use --core cython or python")
        from . import _splicecore  # imports only where the splice core is wanted

        _checked[name] = check_core(_splicecore, "splice")
        return _checked[name]
    raise ValueError(f"unknown core {name!r}: choose from {', '.join(CORES)}")


default = _default()

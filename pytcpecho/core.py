"""Chooses the core: the Cython extension when it is built, else pure Python.

One switch, as in msgpack-python: ``PYTCPECHO_PURE_PYTHON=1`` forces the
pure-Python core (``pytcpecho.switch`` reads it, for the build too);
otherwise the compiled ``pytcpecho._core`` is used when it was built.
Servers and clients may also ask for a core by name.

Every core is checked against the core contract (``pytcpecho.contract``) when
it is first loaded, so a stale or broken build fails there, in one line,
rather than in the middle of a connection, and never passes silently for an
absent one: only a core that was not built at all falls back to pure Python.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from . import _pycore, switch
from .contract import ContractError, Core, check_core

CORES = ("auto", "cython", "python", "splice")

_loaded: dict[str, Core] = {"python": check_core(_pycore, "python")}
_broken: dict[str, str] = {}  # a compiled core that exists but cannot be used: why


def _compiled() -> Core | None:
    """The compiled core, checked; None where it was not built; ContractError where it
    was built but does not import or does not implement the contract."""
    if "cython" in _loaded:
        return _loaded["cython"]
    if "cython" in _broken:
        raise ContractError(_broken["cython"])
    try:
        from . import _core
    except ImportError as exc:
        if importlib.util.find_spec(f"{__package__}._core") is None:
            return None  # not built: the pure-Python core stands in
        # Built, but against other constants or another Python.
        _broken["cython"] = f"the compiled core does not import: {exc}"
        raise ContractError(_broken["cython"]) from None
    try:
        _loaded["cython"] = check_core(_core, "cython")
    except ContractError as exc:
        _broken["cython"] = str(exc)
        raise
    return _loaded["cython"]


def cython_available() -> bool:
    """Whether the compiled core was built and can be used."""
    try:
        return _compiled() is not None
    except ContractError:
        return False


def splice_available() -> bool:
    """Whether the splice core can run: the compiled core on Linux."""
    return sys.platform == "linux" and cython_available()


def load(name: str = "auto") -> Core:
    """The core module for ``name`` ("auto", "cython", "python" or "splice").

    Raises ValueError for an unknown name or a bad PYTCPECHO_PURE_PYTHON,
    RuntimeError for a core that cannot run here, ContractError (an
    ImportError) for a compiled core that is built but broken.
    """
    if name == "auto":
        if switch.pure_python(os.environ):
            return _loaded["python"]
        return _compiled() or _loaded["python"]
    if name in _loaded:
        return _loaded[name]
    if name == "cython":
        if _compiled() is None:
            raise RuntimeError("the Cython core is not built: reinstall with a C compiler "
                               "(pip install .) or use --core python")
        return _loaded["cython"]
    if name == "splice":
        if not splice_available():
            raise RuntimeError("the splice core needs Linux and the built Cython core: "
                               "use --core cython or python")
        from . import _splicecore  # imported only where the splice core is wanted

        _loaded[name] = check_core(_splicecore, "splice")
        return _loaded[name]
    raise ValueError(f"unknown core {name!r}: choose from {', '.join(CORES)}")


def __getattr__(name: str) -> Core:
    """``default``: the core "auto" means now (read on each use, not at import, so a bad
    PYTCPECHO_PURE_PYTHON is an error where the core is chosen, not at import)."""
    if name == "default":
        return load("auto")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

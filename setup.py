"""Declares the Cython extension; all metadata lives in pyproject.toml.

Like msgpack-python: if the extension cannot be built (no compiler), or
PYTCPECHO_PURE_PYTHON asks for it, the package installs with its pure-Python
core.  The variable is read by pytcpecho/switch.py, the same code that reads it
at run time, so the build and the package never disagree on what a value means
(and a value that means neither is an error here, not a silent choice).
"""

import importlib.util
import os
import sys
from types import ModuleType

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


class OptionalBuildExt(build_ext):
    """Build the core if we can; warn and go on without it if we cannot."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any build failure means "no core"
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc: Exception) -> None:
        print(f"WARNING: the Cython core was not built ({exc}); "
              "pytcpecho will use its pure-Python core.", file=sys.stderr)


def load_switch() -> ModuleType:
    """pytcpecho/switch.py, loaded by its path: the package itself is not importable yet."""
    path = os.path.join(HERE, "pytcpecho", "switch.py")
    spec = importlib.util.spec_from_file_location("_pytcpecho_switch", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extensions() -> list[Extension]:
    try:
        pure_python: bool = load_switch().pure_python(os.environ)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    if pure_python:
        return []
    from Cython.Build import cythonize  # only needed when there is something to compile

    ext = Extension(
        "pytcpecho._core",
        ["csrc/_core.pyx"],
        include_dirs=["csrc"],
        extra_compile_args=["-O2"],
    )
    return list(cythonize([ext], include_path=["csrc"], language_level=3))


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})

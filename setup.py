"""Declares the Cython extension; all metadata lives in pyproject.toml.

Like msgpack-python: if the extension cannot be built (no compiler), or
PYTCPECHO_PURE_PYTHON=1 is set, the package installs with its pure-Python core.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


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


def extensions() -> list[Extension]:
    if os.environ.get("PYTCPECHO_PURE_PYTHON"):
        return []
    from Cython.Build import cythonize

    ext = Extension(
        "pytcpecho._core",
        ["csrc/_core.pyx"],
        include_dirs=["csrc"],
        extra_compile_args=["-O2"],
    )
    return cythonize([ext], include_path=["csrc"], language_level=3)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})

"""The package as installed: which core is active, that CI tests the compiled one, and that
PYTCPECHO_PURE_PYTHON means the same to the build (setup.py) as to the running package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import cli, require

from pytcpecho import __version__, switch
from pytcpecho import core as cores

ROOT = Path(__file__).resolve().parents[1]
ON = ("1", "true", "yes", "on", "TRUE", "Yes", "On", " 1 ")
OFF = (None, "", " ", "0", "false", "no", "off", "FALSE", "No", "OFF")
BAD = ("banana", "2", "-1", "y", "n", "enabled", "disable", "0n", "true1")


def test_ci_tests_the_cython_core() -> None:
    require(None if cores.cython_available() else "the Cython core is not built here",
            "the Cython extension did not build, and CI must test it")
    require("PYTCPECHO_PURE_PYTHON is on here" if switch.pure_python(os.environ) else None,
            "CI must test the compiled core, but PYTCPECHO_PURE_PYTHON is on")
    assert cores.load("auto").NAME == "cython"


def test_version_names_the_active_core() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"pytcpecho {__version__} (core: {cores.load('auto').NAME})"


# -- PYTCPECHO_PURE_PYTHON ---------------------------------------------------------------

def _environ(value: str | None) -> dict[str, str]:
    return {} if value is None else {switch.PURE_PYTHON: value}


@pytest.mark.parametrize("value", ON)
def test_switch_on(value: str) -> None:
    assert switch.pure_python(_environ(value)) is True


@pytest.mark.parametrize("value", OFF)
def test_switch_off(value: str | None) -> None:
    assert switch.pure_python(_environ(value)) is False


@pytest.mark.parametrize("value", BAD)
def test_switch_refuses_anything_else(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        switch.pure_python(_environ(value))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"PYTCPECHO_PURE_PYTHON={value!r} ")
    for word in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        assert word in message


# setup.py run with stand-ins for setuptools and Cython: what it would build, without
# building anything (no compiler run, no file written), or the error it stops with.
SETUP_PROBE = """
import json, sys, types

class Extension:
    def __init__(self, name, *args, **kwargs):
        self.name = name

def setup(ext_modules=(), **kwargs):
    print(json.dumps([ext.name for ext in ext_modules]))

setuptools = types.ModuleType("setuptools")
setuptools.Extension, setuptools.setup = Extension, setup
build_ext = types.ModuleType("setuptools.command.build_ext")
build_ext.build_ext = object
cython_build = types.ModuleType("Cython.Build")
cython_build.cythonize = lambda exts, **kwargs: list(exts)
sys.modules.update({"setuptools": setuptools, "setuptools.command": types.ModuleType("c"),
                    "setuptools.command.build_ext": build_ext,
                    "Cython": types.ModuleType("Cython"), "Cython.Build": cython_build})
sys.modules.pop("pytcpecho", None)
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
sys.argv = ["setup.py"]
exec(compile(open("setup.py").read(), "setup.py", "exec"), {"__name__": "__main__",
                                                            "__file__": "setup.py"})
"""


def run_setup(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != switch.PURE_PYTHON}
    env.update(_environ(value))
    return subprocess.run([sys.executable, "-c", SETUP_PROBE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


LIBRARY_PROBE = """
import sys
try:
    from pytcpecho import core
    name = core.load("auto").NAME
except ValueError as exc:
    sys.exit(f"error: {exc}")
print(name)
"""


def run_package(value: str | None, how: str) -> subprocess.CompletedProcess[str]:
    """The core the package picks by itself ("auto") with the variable set so: as the
    command says (``--version``) or as a program using the library gets it."""
    env = {k: v for k, v in os.environ.items() if k != switch.PURE_PYTHON}
    env.update(_environ(value))
    argv = ["-m", "pytcpecho", "--version"] if how == "cli" else ["-c", LIBRARY_PROBE]
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("how", ["cli", "library"])
@pytest.mark.parametrize("value", [*ON, *OFF, *BAD])
def test_setup_and_the_package_agree(value: str | None, how: str) -> None:
    """Compiled core built <=> compiled core used; a bad value stops both, in one line."""
    build, runtime = run_setup(value), run_package(value, how)
    if value in BAD:
        assert build.returncode != 0 and runtime.returncode != 0, (build, runtime)
        if how == "cli":
            assert runtime.returncode == 2
        for result in (build, runtime):
            assert "Traceback" not in result.stderr
            assert f"PYTCPECHO_PURE_PYTHON={value!r}" in result.stderr, result.stderr
        return
    assert build.returncode == 0 and runtime.returncode == 0, (build, runtime)
    builds_cython = json.loads(build.stdout) == ["pytcpecho._core"]
    assert builds_cython == (value not in ON)
    compiled = "cython" if cores.cython_available() else "python"
    picked = runtime.stdout.strip().removesuffix(")").rpartition(" ")[2]  # "(core: NAME)"
    assert picked == (compiled if builds_cython else "python"), runtime.stdout


def test_setup_reads_the_switch_without_the_package() -> None:
    """setup.py runs before the package can be imported: it must load switch.py by path."""
    result = run_setup("1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []

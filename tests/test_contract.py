"""The core contract: every core present provides every name, and a core that does not
fails at import in one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from support import assert_one_line_error, require

import pytcpecho
from pytcpecho import _pycore, constants, contract
from pytcpecho import core as cores


def _present() -> list[str]:
    names = ["python"]
    if cores.cython_available():
        names.append("cython")
    if cores.splice_available():
        names.append("splice")
    return names


def test_every_core_is_expected_here() -> None:
    """In CI the compiled core and the splice core must be among those checked."""
    present = _present()
    require(None if "cython" in present else "the Cython core is not built here",
            "the Cython core did not build, and CI must check it against the contract")
    require(None if "splice" in present else "the splice core cannot run here",
            "the splice core must be checked against the contract in CI")


@pytest.mark.parametrize("name", ["python", "cython", "splice"])
def test_core_provides_the_whole_contract(name: str) -> None:
    if name not in _present():
        require(f"the {name} core is not available here")
    module = cores.load(name)
    assert contract.missing(module) == []
    assert set(module.MODES) <= set(constants.MODES)
    assert name == module.NAME


def test_contract_names_what_a_session_must_have() -> None:
    """The runtime check reads the same protocols mypy checks against."""
    assert contract.members(contract.Core) == [
        "NAME", "MODES", "EchoSession", "ClientSession", "ConnectEachSession", "ClientGroup",
        "UdpEchoSession", "UdpClientSession"]
    assert {"run", "stop", "last_dropped", "datagrams_in", "rate_limited", "truncated"} <= set(
        contract.members(contract.UdpServerSession))
    assert {"run", "collect", "stop", "events", "histogram", "sent", "received", "corrupted",
            "jitter_ns", "ttl_min"} <= set(contract.members(contract.UdpClientSession))
    assert {"add", "run", "stop", "histogram", "failures", "unfinished", "failed"} <= set(
        contract.members(contract.ClientGroup))
    assert {"attach", "run", "bytes_in", "bytes_out", "messages"} == set(
        contract.members(contract.ServerSession))
    each = contract.members(contract.ConnectEachSession)
    assert {"run", "stop", "histogram", "mismatch_offset", "target", "run_each",
            "connections"} <= set(each)


def test_a_core_missing_a_name_is_refused() -> None:
    partial = types.ModuleType("partial")
    for name in ("NAME", "MODES", "ClientSession", "ConnectEachSession", "ClientGroup",
                 "UdpEchoSession", "UdpClientSession"):
        setattr(partial, name, getattr(_pycore, name))

    class NoAttach:  # an EchoSession without attach()
        bytes_in = bytes_out = messages = 0

        def run(self) -> str:
            return "eof"

    partial.EchoSession = NoAttach
    assert contract.missing(partial) == ["EchoSession.attach"]
    del partial.ConnectEachSession
    with pytest.raises(contract.ContractError,
                       match=r"^the test core does not implement the core contract: missing "
                             r"ConnectEachSession, EchoSession\.attach$"):
        contract.check_core(partial, "test")


def test_a_stale_build_fails_where_the_core_is_chosen_in_one_line() -> None:
    """A compiled core without a name of the contract stops the first load of a core,
    and the command, with one line that says what is missing: not an AttributeError in
    the middle of a connection, and not a silent fall back to the pure-Python core."""
    code = textwrap.dedent("""
        import sys, types
        stale = types.ModuleType("pytcpecho._core")
        stale.NAME, stale.MODES = "cython", ("stream", "message")
        sys.modules["pytcpecho._core"] = stale
        import pytcpecho.core
        try:
            pytcpecho.core.load("auto")
        except ImportError as exc:
            print(type(exc).__name__, exc)
        from pytcpecho.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    out = subprocess.run([sys.executable, "-c", code, "ping", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    missing = ("the cython core does not implement the core contract: missing EchoSession, "
               "ClientSession, ConnectEachSession, ClientGroup, UdpEchoSession, "
               "UdpClientSession")
    assert out.stdout.strip() == f"ContractError {missing}"
    assert_one_line_error(out, 2)
    assert out.stderr.strip() == f"pytcpecho: error: {missing}"


def test_a_core_that_was_not_built_leaves_the_pure_python_core(tmp_path: Path) -> None:
    """A package with no compiled core at all (no compiler at install time) runs on the
    pure-Python core, quietly: only a core that is there but broken is an error."""
    package = Path(cores.__file__).parent
    shutil.copytree(package, tmp_path / "pytcpecho",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import pytcpecho.core as c; "
            "print(c.cython_available(), c.load().NAME); "
            "from pytcpecho.cli import main; sys.exit(main(['--version']))")
    # -S: no site-packages, so no installed copy of the package can answer instead.
    out = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["False python",
                                       f"pytcpecho {pytcpecho.__version__} (core: python)"]

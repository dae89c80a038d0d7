"""Fuzz of the whole command line (issue 12, item 6): hostile input never wins.

Hypothesis draws argument lists for every command (serve, client, ping, bench, demo,
and ``pytcpecho`` itself) from the real option names, read from ``build_parser()``,
with values from a vocabulary of hostile ones (empty, huge, negative, NaN, infinity,
sub-microsecond, non-ASCII, bracketed, URL-like, 5,000 digits...) and the values each
option really takes, plus PYTCPECHO_* variables.  Each case runs as a real process
against real local servers and must end within CASE_TIMEOUT with a status in ALLOWED
and no traceback on either stream.  A ``serve`` case that starts serving is stopped
with SIGINT once it has said so.

``PYTCPECHO_FUZZ_EXAMPLES`` sets the number of cases (default FUZZ_EXAMPLES, about
two minutes on two busy cores); the cases are the same on every run (derandomized).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import running_server

from pytcpecho import config
from pytcpecho.cli import build_parser
from pytcpecho.switch import PURE_PYTHON

FUZZ_EXAMPLES = 300
EXAMPLES = int(os.environ.get("PYTCPECHO_FUZZ_EXAMPLES", FUZZ_EXAMPLES))
CASE_TIMEOUT = 20.0
ALLOWED = {0, 1, 2, 3, 130, 141}

pytestmark = pytest.mark.timeout(60 + 4 * EXAMPLES)  # a case takes about 1 s

HUGE = "9" * 5000
HOSTILE = [
    "", " ", "0", "-0", "1", "-1", "2", "65536", "nan", "NaN", "-nan", "inf", "-inf",
    "Infinity", "1e-9", "5e-7", "0.0000001", "0.001", "1e308", "1e400", "-1e400", HUGE,
    "-" + HUGE, "1" + "0" * 30, "0x10", "1_000", "1.5", "1e3", "\u0663", "\uff11\uff12", "é", "☃",
    "\udcff", "[::1]", "[::1", "]", "[1.2.3.4]", "[]", "http://127.0.0.1:8000/",
    "tcp://[::1]:80", "file:///etc/passwd", "-", "--", "---x", "-x", "--=", "a" * 300,
    "1TiB", "1EiB", "64MiB", "100KiB", "1kB", "-1k", "1.5k", "0.1b", "10XB", "%s%n",
    "{}", "$(echo hi)", "a..b", ".", "0.0.0.0/0", "::/0", "10.0.0.0/33", "::ffff:1.2.3.4/128",
]
SHORT = ["0.2", "1", "0", "-1", "nan", "inf", "1e-9", "0.0001", HUGE, "", "x", "1e308"]
"""Values for the options that set how long a run lasts: the valid ones keep it short."""
BOUNDED = {
    "duration": SHORT, "interval": ["0.01", "0.1", *SHORT],
    "count": ["1", "3", "0", "-3", "", "x", HUGE, "1.5", "2" * 19],
    "connections": ["1", "2", "0", "-1", "", "x", HUGE, "2" * 19],
}
"""Keyed by the option's dest, so an option added later is fuzzed with HOSTILE values."""
TEXT = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
"""No argument or variable can hold a NUL, nor a lone surrogate but the undecodable bytes
(U+DC80-U+DCFF, in HOSTILE) Python maps to them."""
HOSTS = ["a..b", ".", "a" * 64 + ".example", "nohost.invalid", "", "[::1", "[nope]:80",
         "http://127.0.0.1/", "127.0.0.1:0", "127.0.0.1:65536", "h:" + HUGE, "[::1]:1",
         "127.0.0.1:1", "\udcff", "é.example", ":80", "a:b:c", "-1", "nan"]


@dataclass(frozen=True)
class Option:
    strings: tuple[str, ...]
    dest: str
    takes_value: bool
    choices: tuple[str, ...]


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **sub.choices}


def options(parser: argparse.ArgumentParser) -> list[Option]:
    """The command's options, as its parser has them (not a list kept by hand)."""
    return [Option(tuple(a.option_strings), a.dest, a.nargs != 0,
                   tuple(map(str, a.choices or ())))
            for a in parser._actions if a.option_strings]


COMMANDS = commands()
NAMES = [name for name in COMMANDS if name]
TARGETED = {name for name, p in COMMANDS.items()
            if any(a.dest == "target" for a in p._actions)}
VARIABLES = sorted({n for a in COMMANDS["serve"]._actions
                    if (n := config.env_name(a)) is not None} | {PURE_PYTHON})


@dataclass(frozen=True)
class Servers:
    stream: int
    message: int


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """A stream and a message server that end any connection that goes on: after 1 MiB
    each way, or 3 s without progress (so a valid but long client run ends soon)."""
    limits = {"max_bytes": 1 << 20, "idle_timeout": 3.0}
    with running_server(mode="stream", **limits) as stream, \
            running_server(mode="message", size=1024, **limits) as message:
        yield Servers(stream.address[1], message.address[1])


def values(option: Option) -> st.SearchStrategy[str]:
    if option.dest in BOUNDED:
        return st.sampled_from(BOUNDED[option.dest])
    return st.sampled_from([*option.choices, *HOSTILE]) | st.text(TEXT, max_size=8)


@st.composite
def argument(draw: st.DrawFn, command: str) -> list[str]:
    """One option with a value (if it takes one), or a stray hostile word."""
    choices = options(COMMANDS[command])
    if draw(st.integers(0, 9)) == 0:
        return [draw(st.sampled_from(HOSTILE))]
    option = draw(st.sampled_from(choices))
    flag = draw(st.sampled_from(option.strings))
    if not option.takes_value:
        return [flag]
    value = draw(values(option))
    if flag.startswith("--") and draw(st.booleans()):
        return [f"{flag}={value}"]
    return [flag, value]


@st.composite
def cases(draw: st.DrawFn, ports: Servers) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) for one run."""
    command = draw(st.sampled_from(["", *NAMES, *[n for n in NAMES if n != "demo"]]))
    argv = [command] if command else []
    if command in TARGETED:
        good = [f"127.0.0.1:{ports.stream}", f"localhost:{ports.message}",
                f"127.0.0.1:{ports.message}"]
        argv.append(draw(st.sampled_from(good) | st.sampled_from(HOSTS)))
    if command in LONG_RUNNING and draw(st.booleans()):
        argv += ["--port", "0"]  # else the default or what the fuzz gave
    if command == "mesh" and draw(st.booleans()):
        argv += ["--peers", f"127.0.0.1:{ports.stream}", "--metrics-port", "0"]
    for more in draw(st.lists(argument(command), max_size=5)):
        argv += more
    env = draw(st.dictionaries(st.sampled_from(VARIABLES),
                               st.sampled_from(["1", "0", "yes", "stream", "message", "0.5",
                                                "python", "json", *HOSTILE]),
                               max_size=3))
    return argv, env


LONG_RUNNING = ("serve", "mesh")
STARTED = re.compile(r"Server at |Supervisor \(pid|Checking |Mesh node |Peer |Metrics at ")
"""The first line of a serve or mesh process that runs (text or JSON): its handlers are
set (they are, before any line is logged)."""


def run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """The command's status, stdout and stderr; a serve or mesh that starts gets SIGINT
    once it has printed its first line (its handlers are in place by then)."""
    proc = subprocess.Popen([sys.executable, "-m", "pytcpecho", *argv],
                            stdin=subprocess.DEVNULL,  # merge - reads it: at once, empty
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **env}, errors="backslashreplace", text=True)
    assert proc.stdout is not None
    try:
        first = ""
        if argv[:1] and argv[0] in LONG_RUNNING:
            first = proc.stdout.readline()  # "" once it exited without a word
            if STARTED.search(first) and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=CASE_TIMEOUT)
        return proc.returncode, first + out, err
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"no end in {CASE_TIMEOUT} s: {argv!r} {env!r}\n{out}\n{err}") \
            from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_vocabulary_reaches_every_command() -> None:
    assert set(NAMES) == {"serve", "mesh", "client", "ping", "bench", "demo", "merge"}
    assert sorted(TARGETED) == ["bench", "client", "ping"]
    for name in NAMES:  # merge reads files, and runs no echo loop
        assert any("--core" in o.strings for o in options(COMMANDS[name])) == (name != "merge")
    assert "PYTCPECHO_WORKERS" in VARIABLES and PURE_PYTHON in VARIABLES


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_hostile_command_lines(servers: Servers, data: st.DataObject) -> None:
    argv, env = data.draw(cases(servers), label="case")
    status, out, err = run(argv, env)
    where = f"pytcpecho {argv!r} with {env!r}: status {status}\n{out[-2000:]}\n{err[-2000:]}"
    assert status in ALLOWED, where
    assert "Traceback" not in out and "Traceback" not in err, where
    if status == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and ": error: " in lines[0], where
        assert len(lines[0]) < 1000, where

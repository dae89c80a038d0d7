"""serve's options from PYTCPECHO_* variables (flags win), and --log-format json."""

from __future__ import annotations

import json
import logging
import re

import pytest
from support import LOCALHOST, ServeProcess, assert_one_line_error, cli

from pytcpecho import EchoClient, config, logs, switch
from pytcpecho.cli import build_parser
from pytcpecho.units import quote

pytestmark = pytest.mark.timeout(60)

SETTINGS = (r"^.* (\w+) mode, (\d+)-byte messages, core (\w+), at most (\d+) clients, "
            r"idle timeout ([^,]*)")


def test_environment_sets_serve_options() -> None:
    env = {"PYTCPECHO_HOST": "127.0.0.1", "PYTCPECHO_PORT": "0", "PYTCPECHO_MODE": "message",
           "PYTCPECHO_SIZE": "1KiB", "PYTCPECHO_CORE": "python", "PYTCPECHO_MAX_CLIENTS": "7",
           "PYTCPECHO_IDLE_TIMEOUT": "3", "PYTCPECHO_GRACE": "2.5", "PYTCPECHO_VERBOSE": "1",
           "PYTCPECHO_QUIET": "yes"}
    with ServeProcess(env=env) as server:
        port = int(server.wait_for(r"Server at 127\.0\.0\.1:(\d+)$")[1])
        assert server.wait_for(SETTINGS).groups() == ("message", "1024", "python", "7", "3 s")
        assert EchoClient(LOCALHOST, port, size=1024, count=3).run().intact
        assert server.stop() == 0
        output = server.output()
    assert "up to 2.5 s to finish" in output
    assert "Connected by client" not in output  # PYTCPECHO_QUIET


def test_flags_win_over_the_environment() -> None:
    env = {"PYTCPECHO_MODE": "message", "PYTCPECHO_MAX_CLIENTS": "7", "PYTCPECHO_VERBOSE": "1",
           "PYTCPECHO_PORT": "1", "PYTCPECHO_SIZE": ""}  # empty: as if unset
    with ServeProcess("--port", "0", "--mode", "stream", "--max-clients", "9", env=env) as server:
        assert server.wait_listening() != 1
        mode, size, _, clients, _ = server.wait_for(SETTINGS).groups()
    assert (mode, size, clients) == ("stream", "102400", "9")


def test_flags_replace_list_variables() -> None:
    """--deny adds to its default: the variable must not be added to the flags."""
    env = {"PYTCPECHO_DENY": "127.0.0.0/8"}
    with ServeProcess("--port", "0", "--host", "127.0.0.1", "--deny", "10.0.0.0/8",
                      env=env) as server:
        port = server.wait_listening()
        assert EchoClient(LOCALHOST, port, size=64).run().intact  # 127.0.0.1 not denied
    with ServeProcess("--port", "0", "--host", "127.0.0.1", env=env) as server:
        port = server.wait_listening()
        assert not EchoClient(LOCALHOST, port, size=64, timeout=5).run().intact
        server.wait_for(r"Refused client at \('127\.0\.0\.1'")  # --deny from the environment


def test_flags_replace_count_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTCPECHO_VERBOSE", "yes")
    monkeypatch.setenv("PYTCPECHO_ALLOW", "10.0.0.0/8, 192.168.0.0/16")
    for argv, verbose, allow in ((["serve"], 1, ["10.0.0.0/8", "192.168.0.0/16"]),
                                 (["serve", "-vv", "--allow", "::1"], 2, ["::1"])):
        args = build_parser().parse_args(argv)
        config.finish(args)
        assert (args.verbose, args.allow) == (verbose, allow)


BAD_VARIABLES = [
    ("PYTCPECHO_PORT", "eighty"), ("PYTCPECHO_PORT", "70000"), ("PYTCPECHO_MODE", "fast"),
    ("PYTCPECHO_SIZE", "-1"), ("PYTCPECHO_MAX_CLIENTS", "0"), ("PYTCPECHO_IDLE_TIMEOUT", "soon"),
    ("PYTCPECHO_GRACE", "-1"), ("PYTCPECHO_CORE", "rust"), ("PYTCPECHO_QUIET", "maybe"),
    ("PYTCPECHO_WORKERS", "0"), ("PYTCPECHO_LOG_FORMAT", "xml"), ("PYTCPECHO_VERBOSE", "lots"),
    # issue 12: each named the variable only when its option's parser refused the value
    ("PYTCPECHO_ALLOW", "abc"), ("PYTCPECHO_DENY", "10.0.0.0/8,10.0.0.0/33"),
    ("PYTCPECHO_HOST", "a..b"), ("PYTCPECHO_HOST", "no-such-host.invalid"),
    ("PYTCPECHO_SIZE", "1TiB"), ("PYTCPECHO_VERBOSE", "2"), ("PYTCPECHO_QUIET", "2"),
    ("PYTCPECHO_REUSE_PORT", "banana"), ("PYTCPECHO_WORKERS", "100000"),
    ("PYTCPECHO_MAX_BYTES", "lots"), ("PYTCPECHO_WORKER_IDLE", "0"),
    ("PYTCPECHO_PORT", "9" * 5000), ("PYTCPECHO_METRICS_PORT", "nine"),
    ("PYTCPECHO_UDP", "perhaps"), ("PYTCPECHO_UDP_RATE", "-5"),
    ("PYTCPECHO_UDP_RATE", "fast"), ("PYTCPECHO_UDP_MAX_SIZE", "70000"),
    ("PYTCPECHO_UDP_MAX_SIZE", "0"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VARIABLES, ids=lambda v: v[:20])
def test_a_bad_variable_is_one_line_naming_it(name: str, value: str) -> None:
    line = assert_one_line_error(cli("serve", env={name: value}), 2)
    shown = quote(value)
    assert line.startswith(f"pytcpecho serve: error: {name}={shown}: "), line
    assert len(line) < 300 and "set_int_max_str_digits" not in line, line


def variables(command: str) -> set[str | None]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {config.env_name(a) for a in sub._actions} - {None}


def test_every_variable_has_a_bad_value_tested() -> None:
    """The table above covers every variable serve reads, as the parser names them."""
    assert variables("serve") == {name for name, _ in BAD_VARIABLES}


BAD_MESH_VARIABLES = [
    ("PYTCPECHO_PEERS", "[::1"), ("PYTCPECHO_PEERS", "a:0"), ("PYTCPECHO_SELF", "node-1"),
    ("PYTCPECHO_INTERVAL", "0"), ("PYTCPECHO_BULK_EVERY", "0"), ("PYTCPECHO_BULK_SIZE", "2GiB"),
    ("PYTCPECHO_TIMEOUT", "-1"), ("PYTCPECHO_RESOLVE_INTERVAL", "soon"),
    ("PYTCPECHO_CONCURRENCY", "0"), ("PYTCPECHO_SAMPLE_PEERS", "-1"),
    ("PYTCPECHO_PEER_LABEL", "ldap"), ("PYTCPECHO_METRICS_PORT", "70000"),
    ("PYTCPECHO_LOG_CONNECTIONS", "maybe"), ("PYTCPECHO_CONCURRENCY", "100000"),
    ("PYTCPECHO_NO_UDP", "maybe"), ("PYTCPECHO_UDP_COUNT", "0"),
]


@pytest.mark.parametrize(("name", "value"), BAD_MESH_VARIABLES, ids=lambda v: v[:20])
def test_a_bad_mesh_variable_is_one_line_naming_it(name: str, value: str) -> None:
    line = assert_one_line_error(cli("mesh", env={name: value}), 2)
    assert line.startswith(f"pytcpecho mesh: error: {name}={quote(value)}: "), line


def test_every_mesh_variable_has_a_bad_value_tested() -> None:
    """Mesh reads serve's variables (less --mode, --size, --workers, -q) and its own: each
    of its own has a bad value above (a name is any text)."""
    own = variables("mesh") - variables("serve")
    tested = {name for name, _ in BAD_MESH_VARIABLES} - {"PYTCPECHO_METRICS_PORT"}
    assert own == tested | {"PYTCPECHO_NAME"}
    assert variables("serve") - variables("mesh") == {
        "PYTCPECHO_MODE", "PYTCPECHO_SIZE", "PYTCPECHO_WORKERS", "PYTCPECHO_QUIET",
        "PYTCPECHO_UDP"}  # mesh: on unless PYTCPECHO_NO_UDP


def test_a_core_that_cannot_serve_the_mode_names_the_variable() -> None:
    line = assert_one_line_error(cli("serve", env={"PYTCPECHO_CORE": "splice",
                                                   "PYTCPECHO_MODE": "message"}), 2)
    assert line.startswith("pytcpecho serve: error: PYTCPECHO_CORE='splice': "), line


@pytest.mark.parametrize("name", ["PYTCPECHO_QUIET", "PYTCPECHO_VERBOSE",
                                  "PYTCPECHO_REUSE_PORT"])
@pytest.mark.parametrize("value", switch.ON + switch.OFF + ("TRUE", "Off", " yes "))
def test_switch_variables_read_as_pure_python_does(name: str, value: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """One set of switch values for every boolean variable: PYTCPECHO_PURE_PYTHON's."""
    monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["serve"])
    config.finish(args)
    dest = name.removeprefix("PYTCPECHO_").lower()
    assert bool(getattr(args, dest)) == switch.flag(value)


def test_a_bad_serve_variable_leaves_other_commands_alone() -> None:
    assert cli("--version", env={"PYTCPECHO_PORT": "eighty"}).returncode == 0


def test_help_names_the_variables() -> None:
    text = " ".join(cli("serve", "--help").stdout.split())
    for name in ("HOST", "PORT", "MODE", "SIZE", "MAX_CLIENTS", "IDLE_TIMEOUT", "GRACE", "CORE",
                 "WORKERS", "LOG_FORMAT"):
        assert f"[env: PYTCPECHO_{name}]" in text, name


def test_json_log_is_one_object_per_line() -> None:
    with ServeProcess("--port", "0", "--mode", "message", "--size", "2048",
                      env={"PYTCPECHO_LOG_FORMAT": "json"}) as server:
        port = int(server.wait_for(r'"message": "Server at .*:(\d+)')[1])
        result = EchoClient(LOCALHOST, port, size=2048).run()
        assert result.intact
        server.wait_for(r"Connection closed by client")
        assert server.stop() == 0
        records = [json.loads(line) for line in server.output().splitlines()]
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    by_message = {r["message"].split(" at ")[0]: r for r in records}
    connected = by_message["Connected by client"]
    assert connected["level"] == "INFO" and connected["logger"] == "pytcpecho.conn"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", connected["peer"])
    assert by_message["Received 2048 bytes"]["bytes"] == 2048
    summary = records[-1]
    assert summary["message"].startswith("Served 1 connection")
    assert (summary["connections"], summary["bytes"], summary["errors"]) == (1, 2048, 0)
    assert (summary["idle_timeouts"], summary["over_max_bytes"], summary["refused"]) == (0, 0, 0)


def test_json_log_of_workers_names_each_worker() -> None:
    with ServeProcess("--port", "0", "-q", env={"PYTCPECHO_LOG_FORMAT": "json",
                                                "PYTCPECHO_WORKERS": "2"}) as server:
        for _ in range(2):
            server.wait_for(r'"message": "Server at')
        assert server.stop() == 0
        records = [json.loads(line) for line in server.output().splitlines()]
    listening = [r for r in records if r["message"].startswith("Server at")]
    assert sorted(r["worker"] for r in listening) == [1, 2]
    assert len({r["pid"] for r in listening}) == 2
    summary = records[-1]
    assert summary["logger"] == "pytcpecho.supervisor"
    assert summary["message"] == ("Served 0 connections, echoed 0 bytes, 0 errors (0 idle "
                                  "timeouts, 0 over --max-bytes, 0 refused) in 2 workers")
    assert (summary["connections"], summary["bytes"], summary["errors"]) == (0, 0, 0)
    assert (summary["idle_timeouts"], summary["over_max_bytes"], summary["refused"]) == (0, 0, 0)
    assert summary["workers"] == 2 and "worker" not in summary  # no worker logged it


def test_structured_fields_from_a_record() -> None:
    record = logging.LogRecord("pytcpecho.conn", logging.WARNING, __file__, 1,
                               "Closed connection from %r: idle for %g s", (("::1", 5), 2.5), None)
    assert logs.structured_fields(record) == {"peer": "[::1]:5", "seconds": 2.5}
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "Closed connection from ('::1', 5): idle for 2.5 s"
    assert line["level"] == "WARNING" and line["peer"] == "[::1]:5"

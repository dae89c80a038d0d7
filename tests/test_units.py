"""What users type: sizes, ports, HOST:PORT; and what they read back."""

from __future__ import annotations

import pytest

from pytcpecho.units import (
    DEFAULT_PORT,
    format_hostport,
    format_size,
    parse_hostport,
    parse_port,
    parse_size,
    peer_name,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("0", 0),
    ("1", 1),
    ("102400", 102400),
    ("100KiB", 102400),
    ("100kib", 102400),
    ("100K", 102400),
    ("64k", 65536),
    ("1 KiB", 1024),
    ("  2k  ", 2048),
    ("1MiB", 1 << 20),
    ("1m", 1 << 20),
    ("1GiB", 1 << 30),
    ("1.5GiB", 3 << 29),
    ("0.5k", 512),
    ("1TiB", 1 << 40),
    ("1kB", 1000),
    ("1MB", 1000 ** 2),
    ("2GB", 2 * 1000 ** 3),
    ("1B", 1),
    ("9007199254740993", 2 ** 53 + 1),  # beyond a float's precision: must stay exact
    ("1048576TiB", 1 << 60),  # the most one run may move
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", [
    "", " ", "abc", "-1", "+1", "1e3", "1.5", "1.1k", "0.0001k", "1KiBB", "1XiB", "k",
    "1 2", "1,000", "0x10", "١٢",  # non-ASCII digits are not a size
    "1048577TiB", "123456789012345678901234567890",  # beyond 1 EiB: offsets would overflow
])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("1", 1), ("80", 80), ("8000", 8000), ("65535", 65535), (" 80 ", 80), (443, 443),
])
def test_parse_port(text: str | int, expected: int) -> None:
    assert parse_port(text) == expected


@pytest.mark.parametrize("text", ["0", "65536", "-1", "99999", "", "x", "0x50", "8.0", "80a"])
def test_parse_port_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid port"):
        parse_port(text)


def test_parse_port_zero_only_where_allowed() -> None:
    assert parse_port("0", allow_zero=True) == 0
    with pytest.raises(ValueError, match="must be 0-65535"):
        parse_port("65536", allow_zero=True)


@pytest.mark.parametrize(("text", "expected"), [
    ("localhost", ("localhost", DEFAULT_PORT)),
    ("localhost:1", ("localhost", 1)),
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("  server:5  ", ("server", 5)),
    ("[::1]:80", ("::1", 80)),
    ("[::1]", ("::1", DEFAULT_PORT)),
    ("::1", ("::1", DEFAULT_PORT)),
    ("fe80::1%eth0", ("fe80::1%eth0", DEFAULT_PORT)),
    ("[fe80::1%lo]:9", ("fe80::1%lo", 9)),
    ("[::ffff:1.2.3.4]:5", ("::ffff:1.2.3.4", 5)),
])
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


def test_parse_hostport_default_port() -> None:
    assert parse_hostport("h", default_port=7) == ("h", 7)
    assert parse_hostport("[::1]", default_port=7) == ("::1", 7)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty address"),
    ("   ", "empty address"),
    (":80", "host is missing"),
    ("h:", "invalid port"),
    ("h:0", "invalid port"),
    ("h:65536", "invalid port"),
    ("h:x", "invalid port"),
    ("[::1]:", "invalid port"),
    ("[::1]:80:90", "invalid port"),
    ("[]:80", "use \\[IPv6\\]:PORT"),
    ("[::1", "use \\[IPv6\\]:PORT"),
    ("[::1]x", "use \\[IPv6\\]:PORT"),
    ("[x]:80", "invalid IPv6 address"),
    ("[1.2.3.4]:80", "invalid IPv6 address"),
    ("a:b:c", "invalid IPv6 address"),
])
def test_parse_hostport_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hostport(text)


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (512, "512 B"), (1024, "1 KiB"), (1536, "1.5 KiB"), (102400, "100 KiB"),
    (1 << 30, "1 GiB"), (1 << 50, "1024 TiB"),
])
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


def test_format_hostport_brackets_ipv6() -> None:
    assert format_hostport("127.0.0.1", 8000) == "127.0.0.1:8000"
    assert format_hostport("::1", 8000) == "[::1]:8000"
    assert parse_hostport(format_hostport("::1", 9)) == ("::1", 9)


def test_peer_name_shows_mapped_ipv4_as_ipv4() -> None:
    assert peer_name(("::ffff:127.0.0.1", 5, 0, 0)) == ("127.0.0.1", 5)
    assert peer_name(("::1", 5, 0, 0)) == ("::1", 5)
    assert peer_name(("10.0.0.1", 6)) == ("10.0.0.1", 6)

"""Parsing and formatting of what users type and read: sizes, ports, addresses."""

from __future__ import annotations

import ipaddress
import re
from fractions import Fraction

from .constants import DEFAULT_PORT, MAX_BYTES, MAX_TIMEOUT, MIN_TIMEOUT

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE | re.ASCII)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def check_seconds(name: str, value: float, least: float = MIN_TIMEOUT,
                  none: str = "") -> None:
    """ValueError unless ``value`` seconds lie in [least, MAX_TIMEOUT]: one rule, and
    one wording, for every timeout and interval of the API (``none`` says what None
    means where it is allowed)."""
    if not least <= value <= MAX_TIMEOUT:
        raise ValueError(f"{name} must be {least:g} to {MAX_TIMEOUT:g} s{none}")


def plural(n: int) -> str:
    """The 's' of '%d connection%s': '' for one, 's' for any other count."""
    return "" if n == 1 else "s"


def parse_size(text: str) -> int:
    """Bytes from '102400', '100KiB', '1MiB', '1.5GiB', '64k' (binary) or '1MB' (decimal)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r}: use bytes, optionally with KiB, MiB, GiB or TiB")
    number, prefix, suffix = m.group(1), m.group(2).lower(), m.group(3).lower()
    base = 1000 if suffix == "b" and prefix else 1024
    value = Fraction(number) * base ** _POWERS[prefix]  # exact, unlike a float
    if value.denominator != 1 or ("." in number and not prefix):
        raise ValueError(f"invalid size {text!r}: not a whole number of bytes")
    if value > MAX_BYTES:
        raise ValueError(f"invalid size {text!r}: at most {MAX_BYTES >> 40} TiB")
    return int(value)


def format_size(n: float) -> str:
    """'100 KiB', '1.5 GiB', '512 B'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_port(text: str | int, *, allow_zero: bool = False) -> int:
    """A TCP port: 1-65535 (0, "any free port", only where allowed)."""
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"invalid port {text!r}: not a number") from None
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"invalid port {port}: must be {low}-65535")
    return port


def parse_hostport(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port', '[v6]' or a bare IPv6 address."""
    text = text.strip()
    if not text:
        raise ValueError("empty address: give HOST or HOST:PORT")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"invalid address {text!r}: use [IPv6]:PORT")
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid address {text!r}: use [IPv6]:PORT")
        port = parse_port(rest[1:]) if rest else default_port
        _check_ipv6(host, text)
        return host, port
    if text.count(":") > 1:  # a bare IPv6 address, no port
        _check_ipv6(text, text)
        return text, default_port
    host, sep, port_text = text.partition(":")
    if not host:
        raise ValueError(f"invalid address {text!r}: the host is missing")
    return host, parse_port(port_text) if sep else default_port


def _check_ipv6(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host.split("%")[0])
    except ValueError:
        raise ValueError(f"invalid IPv6 address in {text!r}") from None


def format_hostport(host: str, port: int) -> str:
    """HOST:PORT with IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_name(address: tuple[object, ...]) -> tuple[str, int]:
    """(ip, port) of a peer, IPv4-mapped IPv6 addresses shown as plain IPv4."""
    host, port = str(address[0]), int(address[1])  # type: ignore[call-overload]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port

"""Parsing and formatting of what users type and read: sizes, ports, addresses."""

from __future__ import annotations

import ipaddress
import re
from fractions import Fraction

from .constants import DEFAULT_PORT, MAX_BYTES, MAX_DIGITS, MAX_TIMEOUT, MIN_TIMEOUT, QUOTE_MAX

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE | re.ASCII)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def check_seconds(name: str, value: float, least: float = MIN_TIMEOUT,
                  none: str = "") -> None:
    """ValueError unless ``value`` seconds lie in [least, MAX_TIMEOUT]: one rule, and
    one wording, for every timeout and interval of the API (``none`` says what None
    means where it is allowed)."""
    if not least <= value <= MAX_TIMEOUT:
        raise ValueError(f"{name} must be {least:g} to {MAX_TIMEOUT:g} s{none}")


def _cut(text: str) -> str:
    """The first QUOTE_MAX characters of a longer ``text``, the last three '...'."""
    return text[:QUOTE_MAX - 3] + "..."


def quote(text: str) -> str:
    """``text`` quoted for an error message, cut to QUOTE_MAX characters with its length
    said when it is longer: a 5,000-digit value must not become a 5,000-digit line."""
    if len(text) <= QUOTE_MAX:
        return repr(text)
    return f"{_cut(text)!r} ({len(text)} characters)"


_LONG_QUOTED = re.compile(rf"'([^'\n]{{{QUOTE_MAX + 1},}})'")


def shorten_quoted(message: str) -> str:
    """``message`` with every quoted value longer than QUOTE_MAX cut as quote() cuts it:
    for the messages others make (argparse's invalid choice, pytcpecho.switch's)."""
    return _LONG_QUOTED.sub(lambda m: f"'{_cut(m[1])}' ({len(m[1])} characters)", message)


def parse_int(text: str, what: str = "number") -> int:
    """A whole number as int() reads it; ValueError naming ``what``, the value quoted,
    for anything else, and "too large" for one of more than MAX_DIGITS digits (before
    int() refuses it with advice about sys.set_int_max_str_digits())."""
    digits = text.strip().lstrip("+-").replace("_", "").lstrip("0")
    if len(digits) > MAX_DIGITS:
        raise ValueError(f"invalid {what} {quote(text)}: too large "
                         f"(more than {MAX_DIGITS} digits)")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid {what} {quote(text)}: not a whole number") from None


def plural(n: int) -> str:
    """The 's' of '%d connection%s': '' for one, 's' for any other count."""
    return "" if n == 1 else "s"


def parse_size(text: str) -> int:
    """Bytes from '102400', '100KiB', '1MiB', '1.5GiB', '64k' (binary) or '1MB' (decimal)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"invalid size {quote(text)}: use bytes, optionally with KiB, MiB, "
                         "GiB or TiB")
    number, prefix, suffix = m.group(1), m.group(2).lower(), m.group(3).lower()
    if len(number.lstrip("0")) > MAX_DIGITS:
        raise ValueError(f"invalid size {quote(text)}: too large, at most "
                         f"{MAX_BYTES >> 40} TiB")
    base = 1000 if suffix == "b" and prefix else 1024
    value = Fraction(number) * base ** _POWERS[prefix]  # exact, unlike a float
    if value.denominator != 1 or ("." in number and not prefix):
        raise ValueError(f"invalid size {quote(text)}: not a whole number of bytes")
    if value > MAX_BYTES:
        raise ValueError(f"invalid size {quote(text)}: too large, at most "
                         f"{MAX_BYTES >> 40} TiB")
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
    port = text if isinstance(text, int) else parse_int(text, "port")
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
            raise ValueError(f"invalid address {quote(text)}: use [IPv6]:PORT")
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid address {quote(text)}: use [IPv6]:PORT")
        port = parse_port(rest[1:]) if rest else default_port
        _check_ipv6(host, text)
        return host, port
    if text.count(":") > 1:  # a bare IPv6 address, no port
        _check_ipv6(text, text)
        return text, default_port
    host, sep, port_text = text.partition(":")
    if not host:
        raise ValueError(f"invalid address {quote(text)}: the host is missing")
    return host, parse_port(port_text) if sep else default_port


def _check_ipv6(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host.split("%")[0])
    except ValueError:
        raise ValueError(f"invalid IPv6 address in {quote(text)}") from None


def format_hostport(host: str, port: int) -> str:
    """HOST:PORT with IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_name(address: tuple[object, ...]) -> tuple[str, int]:
    """(ip, port) of a peer, IPv4-mapped IPv6 addresses shown as plain IPv4."""
    host, port = str(address[0]), int(address[1])  # type: ignore[call-overload]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


def numeric_address(text: str) -> str | None:
    """``text`` as name resolution gives an address (no brackets, IPv4-mapped IPv6 as
    IPv4), if it is an IP address; else None."""
    plain = text.strip().removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(plain.split("%")[0])
    except ValueError:
        return None
    return peer_name((plain, 0))[0]

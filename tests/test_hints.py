"""A stalled echo names its likely cause, and only a cause that fits what the client saw."""

from __future__ import annotations

import threading

import netns
import pytest
from fakes import echo_held_back, fake_server, silent
from support import LOCALHOST, running_server

from pytcpecho import EchoClient

SIZE_HINT = "check that its --size is"
MTU_HINT = "path-MTU blackhole"


@pytest.mark.timeout(60)
def test_size_hint_when_nothing_came_back_in_message_mode(core: str) -> None:
    """A message-mode server waiting for 2000 bytes never answers 1000: nothing comes back."""
    with running_server(mode="message", size=2000, core=core) as server:
        result = EchoClient(LOCALHOST, server.address[1], size=1000, count=2, timeout=1,
                            core=core).run()
    assert not result.intact and result.received == 0
    assert result.problem is not None
    assert f"{SIZE_HINT} 1000 bytes too" in result.problem
    assert MTU_HINT not in result.problem


@pytest.mark.timeout(60)
def test_size_hint_when_the_server_takes_everything_and_answers_nothing(core: str) -> None:
    """The kernel says the server acknowledged every byte: a server waiting for more."""
    release = threading.Event()
    with fake_server(silent(release)) as port:
        try:
            result = EchoClient(LOCALHOST, port, size=5000, count=2, timeout=1,
                                core=core).run()
        finally:
            release.set()
    assert result.problem is not None and f"{SIZE_HINT} 5000 bytes too" in result.problem
    assert "not acknowledged" not in result.problem


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["message", "stream"])
def test_no_size_hint_once_part_of_the_echo_came_back(core: str, mode: str) -> None:
    """Half of the echo came back, then it stalled: a size mismatch cannot do that."""
    release = threading.Event()
    with fake_server(echo_held_back(50_000, release)) as port:
        try:
            result = EchoClient(LOCALHOST, port, size=100_000, timeout=1, mode=mode,
                                core=core).run()
        finally:
            release.set()
    assert result.received == 50_000
    assert result.problem is not None
    assert SIZE_HINT not in result.problem and MTU_HINT not in result.problem
    assert "the echo stalled after part of it came back" in result.problem
    assert "(50000 of 100000 bytes came back intact)" in result.problem


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_a_path_mtu_blackhole_is_named() -> None:
    """A router on the way forwards at most 1400 bytes a packet and its ICMP 'fragmentation
    needed' never comes back: a ping passes, a large echo stalls, and the client names the
    likely cause instead of a --size mismatch."""
    with netns.routed_lab() as lab:
        server = lab.start("server", netns.pytcpecho("serve", "--port", "8000", "-q"))
        server.wait_listening()
        before = lab.run("client", netns.pytcpecho("client", "server:8000", "--size", "1MiB"))
        assert before.returncode == 0, before.stderr  # the path is sound until it shrinks
        lab.mtu_blackhole(1400)
        ping = lab.run("client", netns.pytcpecho("ping", "server:8000"))
        assert ping.returncode == 0, ping.stderr
        for mode in ("message", "stream"):
            big = lab.run("client", netns.pytcpecho("client", "server:8000", "--size", "1MiB",
                                                    "--timeout", "2", "--mode", mode))
            assert big.returncode == 1, big.stdout + big.stderr
            problem = big.stderr.strip()
            assert MTU_HINT in problem and "not acknowledged by the server" in problem, problem
            assert SIZE_HINT not in problem
            print(f"\n{mode}: {problem}")

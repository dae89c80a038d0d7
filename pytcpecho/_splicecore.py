"""The splice core: the Cython core's client, with a server loop that never copies.

``EchoSession`` here is the Cython core's ``SpliceSession``: a stream echo
through a per-connection pipe with splice() (Linux), so echoed bytes never
enter user space.  It echoes streams only; message mode needs to see message
boundaries, which splice() does not, so it raises ValueError.  Datagrams are
the Cython core's own sessions: splice() moves no datagrams.
"""

from __future__ import annotations

from ._core import ClientGroup, ClientSession, ConnectEachSession, UdpClientSession, UdpEchoSession
from ._core import SpliceSession as EchoSession

NAME = "splice"
MODES = ("stream",)

__all__ = ["MODES", "NAME", "ClientGroup", "ClientSession", "ConnectEachSession",
           "EchoSession", "UdpClientSession", "UdpEchoSession"]

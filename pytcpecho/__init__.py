"""pytcpecho: a TCP and UDP echo server and verifying client with a GIL-free Cython core."""

from ._version import __version__
from .client import EchoClient, EchoError, EchoResult, Progress
from .core import cython_available
from .server import EchoServer, ServerStats
from .udpclient import UdpEchoClient, UdpEchoError, UdpResult

__all__ = [
    "EchoClient",
    "EchoError",
    "EchoResult",
    "EchoServer",
    "Progress",
    "ServerStats",
    "UdpEchoClient",
    "UdpEchoError",
    "UdpResult",
    "__version__",
    "cython_available",
]

"""pytcpecho: a TCP echo server and verifying client with a GIL-free Cython core."""

from ._version import __version__
from .client import EchoClient, EchoError, EchoResult
from .core import cython_available
from .server import EchoServer, ServerStats

__all__ = [
    "EchoClient",
    "EchoError",
    "EchoResult",
    "EchoServer",
    "ServerStats",
    "__version__",
    "cython_available",
]

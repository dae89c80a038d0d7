"""pytcpecho: a TCP echo server and verifying client with a GIL-free Cython core."""

from ._version import __version__
from .client import EchoClient, EchoError, EchoResult, Progress
from .core import cython_available
from .server import EchoServer, ServerStats

__all__ = [
    "EchoClient",
    "EchoError",
    "EchoResult",
    "EchoServer",
    "Progress",
    "ServerStats",
    "__version__",
    "cython_available",
]

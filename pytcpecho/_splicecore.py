"""The splice core: the Cython core's client, with a server loop that never copies.

``EchoSession`` here is the Cython core's ``SpliceSession``: a stream echo
through a per-connection pipe with splice() (Linux), so echoed bytes never
enter user space.  It echoes streams only; message mode needs to see message
boundaries, which splice() does not, so it raises ValueError.
"""

from __future__ import annotations

from typing import Any

from . import _core as _cython  # type: ignore[attr-defined]

NAME = "splice"
MODES = ("stream",)
HISTOGRAM_BUCKETS: int = _cython.HISTOGRAM_BUCKETS
EchoSession: Any = _cython.SpliceSession
ClientSession: Any = _cython.ClientSession
ConnectEachSession: Any = _cython.ConnectEachSession

"""GIL pressure: a CPU-bound Python thread in the server's own process (--burn)."""

from __future__ import annotations

import resource
import sys
import threading


def _spin() -> None:
    n = 0
    while True:
        n += 1


def maybe_burn() -> None:
    """Start the CPU-bound thread when the command line says --burn."""
    if "--burn" in sys.argv:
        threading.Thread(target=_spin, name="burn", daemon=True).start()


def raise_nofile() -> None:
    """Room for many idle connections: soft RLIMIT_NOFILE up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

"""Exit statuses and the usage error, shared by the CLI, the serve runner and the supervisor.

Scripts and orchestrators act on the status, so every process of ``pytcpecho``
(a worker of ``serve --workers`` too) must give the same one for the same
outcome.  This module sits below all of them and imports nothing.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NOT_INTACT = 1
"""An echo did not come back intact."""
EXIT_FAILED = 1
"""serve: a second signal cut the drain short (a process manager that restarts on
failure then does)."""
EXIT_USAGE = 2
"""Bad input: one line on stderr."""
EXIT_UNREACHABLE = 3
"""The server is out of reach."""
EXIT_INTERRUPTED = 128 + 2
"""Ctrl-C (SIGINT) in a client: what a shell reports for a process SIGINT ended."""
EXIT_BROKEN_PIPE = 128 + 13
"""stdout closed under us: what a process killed by SIGPIPE gives."""


class UsageError(Exception):
    """Bad input found after parsing: reported like an argparse error, with EXIT_USAGE."""

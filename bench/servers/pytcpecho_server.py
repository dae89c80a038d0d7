"""pytcpecho's EchoServer with a chosen core, in stream mode, quiet.

Runs ``pytcpecho serve`` itself, so the bench measures what users run
(RLIMIT_NOFILE and thread stack size as the CLI sets them); --burn adds
the CPU-bound thread first.
usage: pytcpecho_server.py PORT CORE [--burn] [serve options...]
"""

import sys

from burn import maybe_burn

from pytcpecho.cli import main

maybe_burn()
sys.exit(main(["serve", "--host", "127.0.0.1", "--port", sys.argv[1], "--core", sys.argv[2],
               "--mode", "stream", "-q", "--max-clients", "20000",
               *[a for a in sys.argv[3:] if a != "--burn"]]))

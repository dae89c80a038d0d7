"""pytcpecho's EchoServer with a chosen core, in stream mode, quiet unless --logged.

Runs ``pytcpecho serve`` itself, so the bench measures what users run
(RLIMIT_NOFILE, thread stack size and logging as the CLI sets them); --burn
adds the CPU-bound thread first; --logged keeps the per-connection log lines
(written to the harness's pipe, which reads every one).
usage: pytcpecho_server.py PORT CORE [--burn] [--logged] [serve options...]
"""

import sys

from burn import maybe_burn

from pytcpecho.cli import main

OWN_FLAGS = ("--burn", "--logged")

maybe_burn()
quiet = [] if "--logged" in sys.argv[3:] else ["-q"]
sys.exit(main(["serve", "--host", "127.0.0.1", "--port", sys.argv[1], "--core", sys.argv[2],
               "--mode", "stream", *quiet, "--max-clients", "20000",
               *[a for a in sys.argv[3:] if a not in OWN_FLAGS]]))

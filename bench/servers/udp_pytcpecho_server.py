"""pytcpecho serve --udp: TCP and UDP echo on one port, quiet, the per-source rate limit off.

Runs ``pytcpecho serve`` itself, as pytcpecho_server.py does, so the bench measures
what users run; ``--udp-rate 0`` because the default limit (10,000 datagrams per
second per source) would throttle a benchmark's load; --burn adds the CPU-bound
thread first.
usage: udp_pytcpecho_server.py PORT CORE [--burn] [serve options...]
"""

import sys

from burn import maybe_burn

from pytcpecho.cli import main

maybe_burn()
sys.exit(main(["serve", "--udp", "--udp-rate", "0", "--host", "127.0.0.1", "--port", sys.argv[1],
               "--core", sys.argv[2], "-q", *[a for a in sys.argv[3:] if a != "--burn"]]))

"""``python -m pytcpecho``."""

import sys

from .cli import main

sys.exit(main())

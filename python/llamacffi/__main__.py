"""``python -m llamacffi``: the command line (see :mod:`llamacffi.cli`)."""

import sys

from .cli import main

sys.exit(main())

"""``python -m mlipopt``: the same command line as ``mlipopt`` (useful where scripts are not on PATH)."""

import sys

from .cli import main

sys.exit(main())

"""`python -m SR4ZCTLib.cli`: the `sr4zct` command (the Slicer module's worker runs it so)."""

import sys

from .app import main

sys.exit(main())

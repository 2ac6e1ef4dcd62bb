"""`python -m spiralsearch.cli ...`, the same as the `spiralsearch` console script."""

import sys

from spiralsearch.cli import main

sys.exit(main())

"""``python -m jaxgmm``: the command line."""

import sys

from jaxgmm.cli import main

sys.exit(main())

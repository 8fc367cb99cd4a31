"""`python -m pspnet` runs the command line (also what `torchrun -m pspnet` starts)."""

import sys

from .cli import main

sys.exit(main())

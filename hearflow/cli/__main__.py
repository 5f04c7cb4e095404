"""`python3 -m hearflow.cli`: the same as the `hearflow` command (torchrun starts it so)."""

import sys

from hearflow.cli import main

sys.exit(main())

"""``python -m fgrad``: list the experiments, run one, or reproduce (see fgrad.lab.cli)."""

import sys

from fgrad.lab.cli import main

sys.exit(main())

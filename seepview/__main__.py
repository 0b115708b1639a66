"""``python -m seepview`` (also what ``torchrun -m seepview`` runs)."""

import sys

from seepview.cli import main

sys.exit(main())

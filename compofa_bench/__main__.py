"""``python -m compofa_bench`` (also what ``torchrun -m compofa_bench train`` runs)."""

import sys

from compofa_bench.cli import main

sys.exit(main())

"""``python -m fitfleet.petab problem.yaml --starts 200 --out run/`` (see ``--help``)."""

import sys

from ._cli import main

sys.exit(main())

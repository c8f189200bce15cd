"""``python -m benchbnn`` is the same as the ``benchbnn`` command."""

import sys

from benchbnn.cli import main

sys.exit(main())

"""``python -m ltexp`` is the ``ltexp`` command."""

import sys

from ltexp.cli import main

sys.exit(main())

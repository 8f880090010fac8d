"""``python -m medrs_diff.cli``: the ``medrs-diff`` command."""

import sys

from . import main

sys.exit(main())

"""``python -m kvmtrace.cli``: the same as the ``kvmtrace`` command."""

import sys

from kvmtrace.cli.main import main

sys.exit(main())

"""``python -m tsembed``: the ``tsembed`` command, for environments without the console script on PATH."""

import sys

from tsembed.cli import main

sys.exit(main())

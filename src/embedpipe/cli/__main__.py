"""``python -m embedpipe.cli``: the same command as the ``embedpipe`` console script."""

import sys

from embedpipe.cli import main

sys.exit(main())

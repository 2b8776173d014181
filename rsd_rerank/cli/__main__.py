"""``python -m rsd_rerank.cli``: the ``rsd-rerank`` command."""

import sys

from rsd_rerank.cli import main

sys.exit(main())

"""``python -m service.cli``: the ``moco`` command (the entrypoint of a submitted job)."""

import sys

from . import main

sys.exit(main())

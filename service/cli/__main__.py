"""``python -m service.cli``: the ``ers`` command."""

import sys

from service.cli.main import main

sys.exit(main())

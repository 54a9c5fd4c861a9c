"""``python -m service.cli``: the same as the ``ers`` console script."""

import sys

from service.cli.main import main

sys.exit(main())

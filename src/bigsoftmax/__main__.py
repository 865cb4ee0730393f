"""``python -m bigsoftmax ...`` is the ``bigsoftmax`` command."""

import sys

from .cli import main

sys.exit(main())

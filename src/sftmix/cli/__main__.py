"""``python -m sftmix.cli``: the same as the ``sftmix`` command."""

import sys

from sftmix.cli import main

sys.exit(main())

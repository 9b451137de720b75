"""``python -m orthofm.cli`` == the ``orthofm`` console script."""

import sys

from orthofm.cli import main

sys.exit(main())

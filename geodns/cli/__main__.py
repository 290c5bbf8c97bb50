"""`python -m geodns.cli …`, the same as the `geodns` command."""

import sys

from geodns.cli.commands import main

sys.exit(main())

"""`python -m basalt_cli`: the `basalt` command."""

import sys

from basalt_cli.main import main

if __name__ == "__main__":
    sys.exit(main())

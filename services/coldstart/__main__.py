"""`python -m services.coldstart`: run one node's weight cache (see `basalt coldstart --help`)."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())

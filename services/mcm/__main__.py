"""`python -m services.mcm`: run the control plane (see `basalt mcm --help`)."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())

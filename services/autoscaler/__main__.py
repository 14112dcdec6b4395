"""`python -m services.autoscaler`: run the autoscaler (see `basalt autoscaler --help`)."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m avgn ...``: the ``avgn`` command line (:mod:`avgn.cli`), also under ``torchrun -m avgn``."""

import sys

from avgn.cli import main

if __name__ == "__main__":
    sys.exit(main())

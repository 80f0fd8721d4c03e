"""`python -m clients.keytool` / `cardlink-keytool`."""

from __future__ import annotations

import sys

from clients.keytool._cli import main

if __name__ == "__main__":
    sys.exit(main())

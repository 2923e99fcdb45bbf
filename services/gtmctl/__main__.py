"""``python -m services.gtmctl`` (installed as ``gtmctl``)."""

from __future__ import annotations

import sys

from services.gtmctl.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m services.edge``: the authoritative DNS edge (one process, or N SO_REUSEPORT workers)."""

from __future__ import annotations

import functools
import sys

from services.edge import rrl, workers
from services.edge.app import serve
from services.edge.wire import Malformed
from services.edge.zone import Zone
from shared import logs
from shared.service import run
from shared.settings import SettingsError, from_env


def main() -> int:
    """Read settings, configure logging, run the edge (or its workers)."""
    try:
        settings = from_env("edge")
        Zone.from_settings(settings.edge_zone, settings.edge_ns)  # a bad zone or NS name stops us here
        rrl.parse_exempt(settings.edge_rrl_exempt)
    except (SettingsError, Malformed, rrl.RrlError) as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return 2
    logs.configure(service="edge", level=settings.log_level, fmt=settings.log_format)
    if settings.edge_workers > 1:
        return workers.supervise(settings)
    run(functools.partial(serve, settings=settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

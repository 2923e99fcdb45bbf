"""``python -m services.prober``: health-check every probed address, publish results."""

from __future__ import annotations

import asyncio

from services.prober.service import main as prober_main
from shared import logs, service
from shared.settings import from_env

NAME = "prober"


def run() -> None:
    """Read settings, configure logging and run the prober until SIGINT/SIGTERM."""
    settings = from_env(NAME)
    logs.configure(service=NAME, level=settings.log_level, fmt=settings.log_format)

    async def main(stop: asyncio.Event) -> None:
        await prober_main(settings, stop)

    service.run(main)


if __name__ == "__main__":
    run()

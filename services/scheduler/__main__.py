"""``python -m services.scheduler``: decide every domain's answers from config and probe results."""

from __future__ import annotations

import asyncio

from shared import logs, service
from shared.settings import from_env

from .service import run


def main() -> None:
    """Read settings, configure logging, run until SIGTERM/SIGINT."""
    settings = from_env("scheduler")
    logs.configure(service="scheduler", level=settings.log_level, fmt=settings.log_format)

    async def _main(stop: asyncio.Event) -> None:
        await run(settings, stop)

    service.run(_main)


if __name__ == "__main__":
    main()

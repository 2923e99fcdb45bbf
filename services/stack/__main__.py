"""``python -m services.stack``: the whole GTM in the foreground (what ``make run`` runs)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import structlog

from services.stack.children import stop_deadline_s
from services.stack.plan import Plan, PlanError, build_plan
from services.stack.supervise import supervise
from shared import logs, process

REFUSED = 2  # as supervise's: nothing was started


def plan_or_exit() -> Plan:
    """The stack the environment asks for; exit 2 with one error line when it cannot run as asked."""
    try:
        return build_plan(os.environ, data_dir=Path(os.environ.get("GTM_DATA_DIR", ".data")))
    except PlanError as exc:
        structlog.get_logger(__name__).error("stack_refused", reason=str(exc))
        sys.exit(REFUSED)


def main() -> None:
    """Plan the stack from the environment and supervise it until a signal or a crash loop."""
    logs.configure(
        service="stack",
        level=os.environ.get("GTM_LOG_LEVEL", "info"),
        fmt=os.environ.get("GTM_LOG_FORMAT", "auto"),
    )
    plan = plan_or_exit()
    code = 0

    async def run(stop: asyncio.Event) -> None:
        nonlocal code
        code = await supervise(plan, stop)

    process.run(run, stop_deadline_s=stop_deadline_s())
    sys.exit(code)


if __name__ == "__main__":
    main()

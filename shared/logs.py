"""structlog, configured once per process: JSON off a terminal, console on one.

Every line names its process: ``service`` (config, edge, ...) and ``instance`` (which one of
them: ``GTM_INSTANCE``, by default ``<hostname>-<pid>``).  They are added by a processor, not
bound in a context, so lines logged from any thread carry them too; the standard library's
loggers (nats-py, aiohttp, asyncio) go through the same processors and renderer.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger


def default_instance() -> str:
    """The instance id of a process that was given none: ``<hostname>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class _Identity:
    """Puts ``service`` and ``instance`` first in every event (a bound value of the same key wins)."""

    def __init__(self, service: str, instance: str) -> None:
        self.fields = {"service": service, "instance": instance}

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        return {**self.fields, **event}


def configure(*, service: str, instance: str = "", level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog (and stdlib logging) for one service process.

    ``instance``: default ``GTM_INSTANCE``, else :func:`default_instance` (for the processes that
    read no settings: the stack, nats-init).
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Processor = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _Identity(service, instance or os.environ.get("GTM_INSTANCE", "").strip() or default_instance()),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line, so processes sharing a terminal never interleave halves.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))

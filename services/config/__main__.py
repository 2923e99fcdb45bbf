"""``python -m services.config``: the REST API over the config store."""

from __future__ import annotations

import functools
import sys

import structlog

from services.config.security import check_listen
from services.config.server import serve
from shared import logs, service
from shared.settings import SettingsError, from_env

SERVICE = "config"


def main() -> None:
    """Read settings, refuse an open non-loopback listener, run the service."""
    try:
        settings = from_env(SERVICE)
        listen = check_listen(settings)
    except SettingsError as exc:
        print(f"gtm-config: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.configure(service=SERVICE, level=settings.log_level, fmt=settings.log_format)
    log = structlog.get_logger("services.config")
    if listen.refuse:
        log.error("api_token_required", listen=f"{listen.host}:{listen.port}", reason=listen.error)
        sys.exit(2)
    if listen.warning:
        log.warning("api_unauthenticated", listen=f"{listen.host}:{listen.port}", reason=listen.warning)
    service.run(functools.partial(serve, settings, listen))


if __name__ == "__main__":
    main()

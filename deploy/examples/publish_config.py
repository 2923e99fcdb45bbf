#!/usr/bin/env python3
"""Publish a GTM config document on ``config.apply`` (NATS request/reply) and print the reply.

An example for systems that feed GTM (a CMDB, a deployment pipeline): read the same YAML
document that ``gtmctl apply -f`` takes, send it as JSON, print what the config service answers.

    python deploy/examples/publish_config.py deploy/examples/gtm.yaml             # apply
    python deploy/examples/publish_config.py deploy/examples/gtm.yaml --dry-run   # list the changes only
    python deploy/examples/publish_config.py gtm.yaml --prune   # also delete what it does not list

Request:  {"document": {<gtm.yaml as JSON>}, "prune": false, "dry_run": false}
Reply:    {"status": 200, "body": {"changes": [{"action", "kind", "name", "diff", "resets"}], "dry_run": false}}
     or   {"status": 400, "body": {"error": {"code", "message", "field"}}}   (nothing written)

The field of an error is the REST API's field prefixed with the resource it belongs to, e.g.
``pools.Primary-DC.addresses[0].address``.  The exit code is 0 for status 200, 1 for a refused
document, 2 when no config service answered.  NATS is reached like the services reach it: NATS_URL
(default nats://127.0.0.1:4222), GTM_NATS_USER / GTM_NATS_PASSWORD or GTM_NATS_CREDS.  With the
users of deploy/nats/, publishing on config.apply needs the ``admin`` user (or a user of your own
allowed to publish ``config.apply`` and subscribe to ``_INBOX.>``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import nats
import nats.errors
import yaml

try:
    from shared.subjects import CONFIG_APPLY
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from shared.subjects import CONFIG_APPLY


async def publish(request: dict[str, Any], *, url: str, timeout_s: float) -> dict[str, Any]:
    """Send one request on config.apply and return the decoded reply."""
    async def quiet(exc: Exception) -> None:  # the failure is reported once, by main()
        pass

    options: dict[str, Any] = {
        "servers": url.split(","),
        "name": "gtm-example-publisher",
        "connect_timeout": 2,
        "max_reconnect_attempts": 1,
        "error_cb": quiet,
    }
    if os.environ.get("GTM_NATS_USER"):
        options["user"] = os.environ["GTM_NATS_USER"]
        options["password"] = os.environ.get("GTM_NATS_PASSWORD", "")
    if os.environ.get("GTM_NATS_CREDS"):
        options["user_credentials"] = os.environ["GTM_NATS_CREDS"]
    nc = await nats.connect(**options)
    try:
        # default=str: YAML may hold dates and the like; the service validates every value anyway.
        msg = await nc.request(CONFIG_APPLY, json.dumps(request, default=str).encode(), timeout=timeout_s)
    finally:
        await nc.close()
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


def main(argv: list[str] | None = None) -> int:
    """Read the document, publish it, print the reply; the exit code says how it went."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", help="the YAML (or JSON) document, as for gtmctl apply -f")
    p.add_argument("--prune", action="store_true", help="delete resources the document does not list")
    p.add_argument("--dry-run", action="store_true", help="list the changes, write nothing")
    p.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"), help="NATS URL(s)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    args = p.parse_args(argv)
    with open(args.file) as f:
        document = yaml.safe_load(f) or {}
    request = {"document": document, "prune": args.prune, "dry_run": args.dry_run}
    try:
        reply = asyncio.run(publish(request, url=args.nats, timeout_s=args.timeout))
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
        print(f"error: no config service answered on {CONFIG_APPLY}", file=sys.stderr)
        return 2
    except (OSError, nats.errors.Error) as exc:
        print(f"error: cannot reach NATS at {args.nats}: {exc!r}", file=sys.stderr)
        return 2
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("status") == 200 else 1


if __name__ == "__main__":
    sys.exit(main())

"""``make demo``: the stack, two tiny local backends and the walkthrough's example loaded."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request

from services.stack.__main__ import plan_or_exit
from services.stack.children import die_with_parent, stop_deadline_s
from services.stack.supervise import supervise
from shared import logs, process

PRIMARY, BACKUP, PORT = "127.0.0.2", "127.0.0.3", 8081
DOMAIN = "www.example.com"
CHECK = {"protocol": "http", "port": PORT, "interval_s": 1, "timeout_s": 0.5, "failures": 1}


def example() -> list[tuple[str, str, dict[str, object]]]:
    """The walkthrough's writes: two pools and an enabled domain."""

    def pool(server: str, ip: str) -> dict[str, object]:
        return {"type": "ipv4", "addresses": [{"name": server, "address": ip, "health_check": CHECK}]}

    return [
        ("PUT", "/pools/Primary-DC", pool("Primary-Server-01", PRIMARY)),
        ("PUT", "/pools/Backup-DC", pool("Backup-Server-01", BACKUP)),
        (
            "PUT",
            f"/domains/{DOMAIN}",
            {
                "record_type": "A",
                "ttl": 60,
                "enabled": True,
                "pools": [{"pool": "Primary-DC", "sequence": 1}, {"pool": "Backup-DC", "sequence": 2}],
            },
        ),
    ]


def _load(base: str) -> None:
    for method, path, body in example():
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method=method)
        req.add_header("Content-Type", "application/json")
        urllib.request.urlopen(req, timeout=5).close()


async def _wait_http(url: str, stop: asyncio.Event, stack: asyncio.Task[int]) -> bool:
    while not stop.is_set() and not stack.done():
        try:
            await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=1).close())
            return True
        except OSError:
            await asyncio.sleep(0.2)
    return False


def main() -> None:
    """Run the demo until Ctrl-C."""
    logs.configure(service="demo", fmt=os.environ.get("GTM_LOG_FORMAT", "auto"))
    plan = plan_or_exit()
    host, port = plan.api
    base = f"http://{host}:{port}"
    code = 0

    async def run(stop: asyncio.Event) -> None:
        nonlocal code
        backends = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "http.server", str(PORT), "--bind", ip,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                preexec_fn=die_with_parent(),
            )
            for ip in (PRIMARY, BACKUP)
        ]
        stack = asyncio.create_task(supervise(plan, stop))
        if await _wait_http(base + "/readyz", stop, stack):
            await asyncio.to_thread(_load, base + "/api/v1")
            edge = plan.edges[0][1]
            print(
                f"\nDemo loaded. Try:\n"
                f"  dig @127.0.0.1 -p {edge} {DOMAIN} A +norec        # {PRIMARY}\n"
                f"  kill {backends[0].pid}                                  # stop the primary backend\n"
                f"  dig @127.0.0.1 -p {edge} {DOMAIN} A +short        # {BACKUP}\n"
                f"  curl -s '{base}/api/v1/events?domain={DOMAIN}'\n",
                flush=True,
            )
        code = await stack
        for b in backends:
            if b.returncode is None:
                b.terminate()
            await b.wait()

    process.run(run, stop_deadline_s=stop_deadline_s())
    sys.exit(code)


if __name__ == "__main__":
    main()

"""gdnsd 3 serving an equivalent health-checked failover name, for side-by-side figures."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support import free_port, wait_until

CONFIG = """options => {{
  listen => [ 127.0.0.1:{port} ]
}}
service_types => {{
  web => {{ plugin => http_status, port => {check_port}, url_path => "/", interval => {interval},
           down_thresh => {down}, ok_thresh => 1, up_thresh => 1, timeout => 1 }}
}}
plugins => {{
  simplefo => {{
    bench => {{ service_types => [ web ], primary => {primary}, secondary => {secondary} }}
  }}
}}
"""

ZONE = """@ 900 SOA ns1 hostmaster 1 7200 1800 259200 900
@ 900 NS ns1
ns1 900 A 127.0.0.1
bench 30 DYNA simplefo!bench
"""


class Gdnsd:
    """A gdnsd process with a simplefo failover name ``bench.example.com``."""

    def __init__(self, *, check_port: int, primary: str, secondary: str, interval: int = 2, down: int = 2) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gtm-gdnsd-"))
        self.port = free_port()
        (self.dir / "zones").mkdir()
        (self.dir / "config").write_text(
            CONFIG.format(
                port=self.port, check_port=check_port, interval=interval, down=down,
                primary=primary, secondary=secondary,
            )
        )
        (self.dir / "zones" / "example.com").write_text(ZONE)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Gdnsd:
        binary = shutil.which("gdnsd") or "/usr/sbin/gdnsd"
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.dir), "start"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        from tests.support import dns_query

        wait_until(lambda: dns_query(self.port, "bench.example.com").answer, timeout=20)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def available() -> bool:
    """Whether gdnsd and dnsperf are installed."""
    return bool((shutil.which("gdnsd") or Path("/usr/sbin/gdnsd").exists()) and shutil.which("dnsperf"))

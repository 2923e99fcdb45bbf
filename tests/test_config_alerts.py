"""Alert webhooks end to end: real loopback receivers, switches published on a real NATS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NatsClient

from services.config.app import BACKEND, NOTIFIER, create_app
from services.config.notifier import AlertPolicy, Notifier, TargetWorker
from shared import subjects
from shared.messages import AddressState, PoolState, SwitchEvent, encoder
from shared.resources import AlertTarget
from shared.settings import NatsSettings, Settings, load
from tests.support import until
from tests.test_alert_channels import Mailbox, mailbox  # noqa: F401 - a fixture
from tests.test_config_api import Client, call

POLICY = AlertPolicy(retry_delays_s=(0.05, 0.1), timeout_s=0.5, queue_size=100)


class Receiver:
    """A real loopback webhook: records every POST; can fail its first attempts or hang."""

    def __init__(self, *, fail_first: int = 0, hang: bool = False, status: int = 500) -> None:
        self.fail_first, self.hang, self.status = fail_first, hang, status
        self.attempts = 0
        self.posts: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.json()
        if self.hang:
            await self.release.wait()
        if self.attempts <= self.fail_first:
            return web.Response(status=self.status)
        self.posts.append(body)
        return web.Response(status=204)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def kinds(self) -> list[str]:
        return [p["kind"] for p in self.posts]


@pytest.fixture
async def receivers() -> AsyncIterator[dict[str, Receiver]]:
    made = {
        "ok": await Receiver().start(),
        "flaky": await Receiver(fail_first=2).start(),
        "hang": await Receiver(hang=True).start(),
        "domains": await Receiver().start(),
        "off": await Receiver().start(),
    }
    yield made
    for r in made.values():
        await r.stop()


@pytest.fixture
async def app_client(nats_url: str) -> AsyncIterator[tuple[Client, Notifier]]:
    app = create_app(Settings(nats=NatsSettings(url=nats_url)), alert_policy=POLICY)
    async with TestClient(TestServer(app)) as client:
        await asyncio.wait_for(app[BACKEND].ready.wait(), 15)
        await asyncio.wait_for(app[NOTIFIER].ready.wait(), 15)
        yield client, app[NOTIFIER]


async def _targets(api: Client, notifier: Notifier, receivers: dict[str, Receiver]) -> None:
    extra: dict[str, dict[str, Any]] = {"domains": {"kinds": ["domain"]}, "off": {"enabled": False}}
    for name, r in receivers.items():
        status, _ = await call(api, "PUT", f"/api/v1/alert-targets/{name}", {"url": r.url, **extra.get(name, {})})
        assert status == 201

    async def known() -> bool:
        return all(n in notifier.workers and notifier.workers[n].target.url == r.url for n, r in receivers.items())

    assert await until(known)


def _state(available: bool, a_up: bool, at: float) -> PoolState:
    return PoolState(pool="Primary-DC", available=available, at=at, addresses=[
        AddressState(name="a", address="192.0.2.1", available=a_up, reason="" if a_up else "status 503"),
        AddressState(name="b", address="192.0.2.2", available=False, reason="timeout")])


async def _switches(nc: NatsClient) -> None:
    """A pool state baseline, then address a and the pool going down, then a domain switch."""
    js = nc.jetstream()
    now = time.time()
    await js.publish(subjects.pool_state("Primary-DC"), encoder.encode(_state(True, True, now)))
    await js.publish(subjects.pool_state("Primary-DC"), encoder.encode(_state(False, False, now + 1)))
    switch = SwitchEvent(domain="www.example.com", at=now + 1, from_pool="Primary-DC", to_pool="Backup-DC",
                         reason="Primary-DC unavailable", before=["192.0.2.1"], after=["198.51.100.1"])
    await js.publish(subjects.switch_event("www.example.com"), encoder.encode(switch))


async def _posts(receiver: Receiver, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    async def enough() -> bool:
        return len(receiver.posts) >= n

    assert await until(enough, timeout=timeout), (receiver.url, receiver.attempts, receiver.posts)
    return receiver.posts


async def test_every_switch_reaches_every_target_that_wants_it_despite_failures_and_a_hung_target(
    app_client: tuple[Client, Notifier], nc: NatsClient, receivers: dict[str, Receiver]
) -> None:
    api, notifier = app_client
    await _targets(api, notifier, receivers)
    await _switches(nc)
    ok = await _posts(receivers["ok"], 3)
    assert [p["kind"] for p in ok] == ["address", "pool", "domain"]
    address, pool, domain = ok
    assert (address["pool"], address["address"], address["available"], address["reason"]) == (
        "Primary-DC", "a", False, "status 503")
    assert (address["before"], address["after"]) == (["192.0.2.1"], [])
    assert (pool["pool"], pool["available"]) == ("Primary-DC", False) and pool["message"]
    assert (domain["domain"], domain["reason"], domain["before"], domain["after"]) == (
        "www.example.com", "Primary-DC unavailable", ["192.0.2.1"], ["198.51.100.1"])
    assert domain["message"] == "switched from Primary-DC to Backup-DC: Primary-DC unavailable"
    assert all(p["at"].endswith("Z") for p in ok)
    # failed twice, retried with backoff, then everything delivered in order
    assert (await _posts(receivers["flaky"], 3)) == ok and receivers["flaky"].attempts == 5
    assert await _posts(receivers["domains"], 1) == [domain]
    # the hung target got its first attempt but delayed nobody; the disabled one got nothing
    assert receivers["hang"].attempts >= 1 and receivers["hang"].posts == []
    assert receivers["off"].attempts == 0


async def test_a_target_that_keeps_failing_is_given_up_after_the_retries(
    app_client: tuple[Client, Notifier], nc: NatsClient
) -> None:
    api, notifier = app_client
    broken = await Receiver(fail_first=1000, status=503).start()
    try:
        await _targets(api, notifier, {"broken": broken})
        await _switches(nc)
        worker = notifier.workers["broken"]

        async def given_up() -> bool:
            return worker.failed == 3

        assert await until(given_up)
        assert broken.attempts == 3 * (len(POLICY.retry_delays_s) + 1) and worker.delivered == 0
    finally:
        await broken.stop()


async def test_changing_and_deleting_a_target_follows_the_config(
    app_client: tuple[Client, Notifier], nc: NatsClient, receivers: dict[str, Receiver]
) -> None:
    api, notifier = app_client
    await _targets(api, notifier, {"ok": receivers["ok"]})
    await call(api, "PATCH", "/api/v1/alert-targets/ok", {"kinds": ["pool"]})

    async def narrowed() -> bool:
        return notifier.workers["ok"].target.kinds == ["pool"]

    assert await until(narrowed)
    await _switches(nc)
    assert [p["kind"] for p in await _posts(receivers["ok"], 1)] == ["pool"]
    assert await call(api, "DELETE", "/api/v1/alert-targets/ok") == (204, None)

    async def gone() -> bool:
        return "ok" not in notifier.workers

    assert await until(gone)


async def test_a_full_queue_drops_new_alerts_instead_of_blocking() -> None:
    hung = await Receiver(hang=True).start()
    try:
        async with aiohttp.ClientSession() as session:
            policy = AlertPolicy(retry_delays_s=(), timeout_s=30, queue_size=2)
            worker = TargetWorker("hung", AlertTarget(url=hung.url), session, policy)
            for i in range(5):
                worker.offer({"kind": "pool", "message": str(i)})  # returns at once
            assert worker.queue.qsize() == 2 and worker.dropped == 3
            await until(lambda: _true(hung.attempts == 1))
            worker.offer({"kind": "pool", "message": "5"})  # room for one again while the first hangs
            assert worker.queue.qsize() == 2 and worker.dropped == 3
            await worker.stop()
    finally:
        await hung.stop()


async def _true(value: bool) -> bool:
    return value


async def test_an_email_target_is_put_over_the_api_and_mails_each_switch_with_a_console_link(
    nats_url: str, nc: NatsClient, mailbox: tuple[Mailbox, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    box, smtp = mailbox
    monkeypatch.setenv("GTM_CONSOLE_URL", "http://127.0.0.1:8080/")  # as the service reads it, at start
    settings = load("config")
    app = create_app(msgspec.structs.replace(settings, nats=NatsSettings(url=nats_url)), alert_policy=POLICY)
    hook = await Receiver().start()
    try:
        async with TestClient(TestServer(app)) as api:
            await asyncio.wait_for(app[BACKEND].ready.wait(), 15)
            notifier = app[NOTIFIER]
            await asyncio.wait_for(notifier.ready.wait(), 15)
            mail = {"type": "email", "smtp": smtp, "from": "gtm@example.test", "to": ["ops@example.test"],
                    "kinds": ["domain"]}
            status, body = await call(api, "PUT", "/api/v1/alert-targets/mail", mail)
            assert status == 201 and body["type"] == "email" and body["from"] == "gtm@example.test", body
            assert (await call(api, "PUT", "/api/v1/alert-targets/hook", {"url": hook.url, "kinds": ["domain"]}))[0] == 201
            for bad, field in (({"to": ["ops"]}, "to[0]"), ({"smtp": "127.0.0.1"}, "smtp"), ({"url": hook.url}, "url")):
                status, err = await call(api, "PUT", "/api/v1/alert-targets/bad", mail | bad)
                assert status == 400 and err["error"]["code"] == "invalid_argument" and err["error"]["field"] == field
            status, err = await call(api, "PUT", "/api/v1/alert-targets/bad", {"url": hook.url, "smtp": smtp})
            assert status == 400 and err["error"]["field"] == "smtp"
            assert (await call(api, "GET", "/api/v1/alert-targets/bad"))[0] == 404

            assert await until(lambda: _true("mail" in notifier.workers and "hook" in notifier.workers))
            await _switches(nc)
            assert await until(lambda: _true(len(box.messages) == 1))
            [msg] = box.messages
            assert msg["Subject"] == "GTM: www.example.com switched from Primary-DC to Backup-DC: Primary-DC unavailable"
            lines = msg.get_content().splitlines()
            assert {"Domain: www.example.com", "Pool before: Primary-DC", "Pool after: Backup-DC",
                    "Reason: Primary-DC unavailable", "Console: http://127.0.0.1:8080/#/domains/www.example.com"} <= set(lines)
            assert any(line.startswith("Time: ") and line.endswith("Z") for line in lines)
            [post] = await _posts(hook, 1)
            assert post["console_url"] == "http://127.0.0.1:8080/#/domains/www.example.com"
    finally:
        await hook.stop()

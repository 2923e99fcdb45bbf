"""Least-privilege NATS users (deploy/nats/): every refusal, every allowed path, and the whole GTM on them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import structlog
import structlog.testing
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, StreamConfig
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from shared import bus, messages, subjects
from tests.support import (
    ROOT,
    Api,
    HttpBackend,
    NatsServer,
    Service,
    answer_addresses,
    dns_query,
    free_port,
    services,
    wait_until,
)

CONF = ROOT / "deploy" / "nats" / "nats.conf"
USERS = ("admin", "config", "scheduler", "prober", "edge")
SERVICES = ("config", "scheduler", "prober", "edge")
REFUSED_S = 0.5  # a refused request gets no reply: nats.py waits this long, then raises a timeout


class SecuredNats(NatsServer):
    """A real nats-server started from deploy/nats/nats.conf, passwords in its environment."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        # nats-server parses a $VARIABLE's value as config: a letter first keeps it a string (README)
        self.passwords = {u: "p" + secrets.token_hex(16) for u in USERS}
        super().__init__(
            tmp / "store",
            config=CONF,
            env={f"GTM_NATS_PASS_{u.upper()}": p for u, p in self.passwords.items()},
            log_path=tmp / "nats-server.log",
        )

    def start(self) -> SecuredNats:  # type: ignore[override]
        super().start()
        wait_until(lambda: "Server is ready" in self.log(), timeout=10)
        return self

    def init_streams(self) -> None:
        """The admin step of deploy/nats/README.md: ``python -m shared.bus --init`` as ``admin``."""
        done = subprocess.run(
            [sys.executable, "-m", "shared.bus", "--init"],
            cwd=ROOT, env={**os.environ, **self.env("admin"), "GTM_LOG_FORMAT": "json"},
            capture_output=True, timeout=30, check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert b"streams_ready" in done.stdout + done.stderr

    def env(self, user: str) -> dict[str, str]:
        """What a service needs to log in as ``user``."""
        return {"NATS_URL": self.url, "GTM_NATS_USER": user, "GTM_NATS_PASSWORD": self.passwords[user]}



@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNats]:
    server = SecuredNats(tmp_path_factory.mktemp("secured-nats")).start()
    try:
        server.init_streams()
        yield server
    finally:
        server.stop()


class Login:
    """One nats.py client logged in as one user, remembering the permission errors it was sent."""

    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors
        self.js = nc.jetstream(timeout=5)
        self.js_refused = nc.jetstream(timeout=REFUSED_S)  # for calls that are meant to be refused

    async def refused(self, what: str) -> str:
        """Wait for the server's permissions violation about ``what``; return it."""
        for _ in range(100):
            found = [e for e in self.errors if "permissions violation" in e and what.lower() in e.lower()]
            if found:
                return found[0]
            await asyncio.sleep(0.01)
        raise AssertionError(f"no permissions violation for {what!r}; errors: {self.errors}")


@contextlib.asynccontextmanager
async def login(server: SecuredNats, user: str) -> AsyncIterator[Login]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        server.url, user=user, password=server.passwords[user], error_cb=on_error, allow_reconnect=False
    )
    try:
        yield Login(nc, errors)
    finally:
        await nc.close()


def _answer(domain: str, ip: str) -> bytes:
    return messages.encoder.encode(messages.AnswerSet(domain=domain, enabled=True, record_type="A", records=[ip]))


async def _stream_has(admin: Login, stream: str, subject: str) -> bool:
    try:
        await admin.js.get_last_msg(stream, subject)
    except NotFoundError:
        return False
    return True


# --- the server and its users ----------------------------------------------------------------


async def test_nobody_logs_in_without_a_password_or_with_a_wrong_one(secured: SecuredNats) -> None:
    for kwargs in ({}, {"user": "edge", "password": "wrong"}):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(secured.url, allow_reconnect=False, max_reconnect_attempts=0, **kwargs)


@pytest.mark.parametrize("user", SERVICES)
async def test_every_service_user_checks_the_initialised_streams_without_managing_them(
    secured: SecuredNats, user: str
) -> None:
    async with login(secured, user) as me:
        with structlog.testing.capture_logs() as logged:
            await bus.ensure_streams(me.js)
            kv = await bus.config_bucket(me.js)
        assert kv is not None
        await me.nc.flush()
        assert me.errors == []  # stream_info only: no create or update was even attempted
        assert logged == []


# --- refusals --------------------------------------------------------------------------------

REFUSED_PUBLISH = [
    ("edge", subjects.answers("by-edge.example")),
    ("edge", subjects.pool_state("by-edge")),
    ("edge", subjects.switch_event("by-edge.example")),
    ("edge", subjects.probe_result("local", subjects.address_key("by-edge", "a"))),
    ("edge", subjects.CONFIG_APPLY),
    ("prober", subjects.answers("by-prober.example")),
    ("prober", subjects.pool_state("by-prober")),
    ("prober", subjects.operation_event("domain", "by-prober.example")),
    ("scheduler", subjects.operation_event("domain", "by-scheduler.example")),
    ("config", subjects.answers("by-config.example")),
    ("config", subjects.probe_result("local", subjects.address_key("by-config", "a"))),
]


@pytest.mark.parametrize(("user", "subject"), REFUSED_PUBLISH)
async def test_a_service_cannot_publish_what_another_one_owns(secured: SecuredNats, user: str, subject: str) -> None:
    async with login(secured, "admin") as admin, login(secured, user) as me:
        stream = next((s.name for s in bus.STREAMS if subject.startswith((s.subjects or [""])[0][:-1])), None)
        await me.nc.publish(subject, _answer("refused.example", "192.0.2.66"))
        await me.nc.flush()
        await me.refused(f'publish to "{subject}"')
        if stream is not None:
            with pytest.raises(nats.errors.TimeoutError):  # a JetStream publish gets no ack either
                await me.js_refused.publish(subject, _answer("refused.example", "192.0.2.66"))
            assert not await _stream_has(admin, stream, subject)


@pytest.mark.parametrize(
    ("user", "bucket"),
    [("edge", subjects.CONFIG_BUCKET), ("prober", subjects.CONFIG_BUCKET), ("scheduler", subjects.CONFIG_BUCKET),
     ("edge", subjects.LEASES_BUCKET), ("prober", subjects.LEASES_BUCKET), ("config", subjects.LEASES_BUCKET)],
)
async def test_only_the_owner_writes_a_kv_bucket(secured: SecuredNats, user: str, bucket: str) -> None:
    key = subjects.domain_key(f"by-{user}.example")
    async with login(secured, "admin") as admin, login(secured, user) as me:
        kv = await admin.js.key_value(bucket)
        # Built by hand: the edge may not even look the lease bucket up, writing is what is tried here.
        mine = KeyValue(name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=me.js_refused, direct=False)
        with pytest.raises(nats.errors.TimeoutError):
            await mine.put(key, b'{"evil": true}')
        await me.refused(f'publish to "$KV.{bucket}.{key}"')
        with pytest.raises(KeyNotFoundError):
            await kv.get(key)


@pytest.mark.parametrize(
    ("user", "subject"),
    [("edge", subjects.PROBE_RESULT_ALL), ("edge", subjects.ANSWERS_ALL), ("edge", subjects.CONFIG_APPLY),
     ("edge", subjects.PROBER_MEMBERS_ALL), ("prober", subjects.PROBE_RESULT_ALL), ("prober", subjects.ANSWERS_ALL),
     ("scheduler", subjects.CONFIG_APPLY)],
)
async def test_a_service_cannot_listen_to_what_it_does_not_use(secured: SecuredNats, user: str, subject: str) -> None:
    got: list[Msg] = []

    async def on_msg(msg: Msg) -> None:
        got.append(msg)

    async with login(secured, "admin") as admin, login(secured, user) as me:
        await me.nc.subscribe(subject, cb=on_msg)
        await me.nc.flush()
        await me.refused(f'subscription to "{subject}"')
        await admin.nc.publish(subject.replace(">", "local.p/a"), b"{}")
        await admin.nc.flush()
        await me.nc.flush()
        await asyncio.sleep(0.1)
        assert got == []


@pytest.mark.parametrize("user", SERVICES)
async def test_no_service_can_create_delete_or_purge_a_stream(secured: SecuredNats, user: str) -> None:
    async with login(secured, "admin") as admin, login(secured, user) as me:
        await admin.js.publish(subjects.answers("kept.example"), _answer("kept.example", "192.0.2.1"))
        with pytest.raises(nats.errors.TimeoutError):
            await me.js_refused.delete_stream(subjects.STREAM_ANSWERS)
        with pytest.raises(nats.errors.TimeoutError):
            await me.js_refused.purge_stream(subjects.STREAM_ANSWERS)
        with pytest.raises(nats.errors.TimeoutError):
            await me.js_refused.add_stream(StreamConfig(name="ROGUE", subjects=["rogue.>"]))
        await me.refused('publish to "$JS.API.STREAM.DELETE.ANSWERS"')
        assert await _stream_has(admin, subjects.STREAM_ANSWERS, subjects.answers("kept.example"))


# --- allowed paths ---------------------------------------------------------------------------


async def test_edge_reads_the_last_answer_with_an_ordered_consumer_and_the_topology_key(secured: SecuredNats) -> None:
    domain = "edge-allowed.example"
    async with login(secured, "scheduler") as sched, login(secured, "config") as config, login(secured, "edge") as edge:
        await sched.js.publish(subjects.answers(domain), _answer(domain, "192.0.2.1"))
        await sched.js.publish(subjects.answers(domain), _answer(domain, "192.0.2.2"))
        config_kv = await bus.config_bucket(config.js)
        await config_kv.put(subjects.TOPOLOGY_KEY, b'{"entries": []}')

        sub = await edge.js.subscribe(
            subjects.answers(domain), stream=subjects.STREAM_ANSWERS, ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, idle_heartbeat=1.0,
        )
        msg = await sub.next_msg(timeout=5)
        assert messages.answer_set_decoder.decode(msg.data).records == ["192.0.2.2"]
        kv = await bus.config_bucket(edge.js)
        assert (await kv.get(subjects.TOPOLOGY_KEY)).value == b'{"entries": []}'
        await sub.unsubscribe()
        await edge.nc.flush()
        assert edge.errors == []


async def test_edge_loads_a_snapshot_big_enough_to_need_flow_control(secured: SecuredNats) -> None:
    # Over ~2 MB the server asks the ordered consumer for flow control ($JS.FC.ANSWERS.>);
    # without that permission the snapshot stalls half way and the edge never becomes ready.
    count, filler = 1000, b"x" * 4096
    done, got = asyncio.Event(), 0

    async def on_msg(msg: Msg) -> None:
        nonlocal got
        got += 1
        if got == count:
            done.set()

    async with login(secured, "admin") as admin, login(secured, "edge") as edge:
        for i in range(count):
            await admin.nc.publish(subjects.answers(f"d{i}.fc.example"), filler)
        await admin.nc.flush()
        await edge.js.subscribe(
            subjects.answers("*.fc.example"), stream=subjects.STREAM_ANSWERS, cb=on_msg, ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, idle_heartbeat=1.0,
        )
        await asyncio.wait_for(done.wait(), 10)
        assert edge.errors == []


async def test_prober_publishes_results_and_heartbeats_that_scheduler_and_config_receive(
    secured: SecuredNats,
) -> None:
    subject = subjects.probe_result("local", subjects.address_key("pool", "addr"))
    async with (
        login(secured, "prober") as prober,
        login(secured, "scheduler") as sched,
        login(secured, "config") as config,
    ):
        at_scheduler = await sched.nc.subscribe(subjects.PROBE_RESULT_ALL)
        at_config = await config.nc.subscribe(subjects.PROBE_RESULT_ALL)
        beats = await prober.nc.subscribe(subjects.PROBER_MEMBERS_ALL)
        await sched.nc.flush()
        await config.nc.flush()
        await prober.nc.publish(subject, b"result")
        await prober.nc.publish(subjects.prober_members("local"), b"beat")
        await prober.nc.flush()
        assert (await at_scheduler.next_msg(timeout=2)).subject == subject
        assert (await at_config.next_msg(timeout=2)).subject == subject
        assert (await beats.next_msg(timeout=2)).data == b"beat"
        assert prober.errors == sched.errors == config.errors == []


async def test_scheduler_publishes_answers_pool_views_switches_purges_and_holds_the_lease(
    secured: SecuredNats,
) -> None:
    async with login(secured, "scheduler") as sched, login(secured, "admin") as admin:
        assert (await sched.js.publish(subjects.answers("sched.example"), _answer("sched.example", "192.0.2.3"))).seq
        assert (await sched.js.publish(subjects.pool_state("p1"), b"{}")).stream == subjects.STREAM_POOL_STATE
        assert (await sched.js.publish(subjects.switch_event("sched.example"), b"{}")).stream == subjects.STREAM_EVENTS
        await sched.js.purge_stream(subjects.STREAM_POOL_STATE, subject=subjects.pool_state("p1"))
        assert not await _stream_has(admin, subjects.STREAM_POOL_STATE, subjects.pool_state("p1"))
        leases = await sched.js.key_value(subjects.LEASES_BUCKET)
        revision = await leases.put(subjects.SCHEDULER_LEASE_KEY, b"me")
        assert (await leases.get(subjects.SCHEDULER_LEASE_KEY)).revision == revision
        await leases.delete(subjects.SCHEDULER_LEASE_KEY, last=revision)
        watcher = await (await bus.config_bucket(sched.js)).watchall()
        await watcher.stop()  # type: ignore[no-untyped-call]
        await sched.nc.flush()
        assert sched.errors == []


async def test_config_writes_the_bucket_logs_operations_and_answers_config_apply(secured: SecuredNats) -> None:
    key = subjects.domain_key("config-allowed.example")
    async with login(secured, "config") as config, login(secured, "admin") as admin:
        kv = await bus.config_bucket(config.js)
        revision = await kv.create(key, b"{}")
        assert await kv.update(key, b'{"v": 2}', last=revision) > revision
        await kv.delete(key)
        ack = await config.js.publish(subjects.operation_event("domain", "config-allowed.example"), b"{}")
        assert ack.stream == subjects.STREAM_EVENTS
        assert (await config.js.stream_info(subjects.STREAM_EVENTS)).state.messages >= 1

        async def respond(msg: Msg) -> None:
            await msg.respond(b"applied")  # allow_responses: a reply to a request it received

        await config.nc.subscribe(subjects.CONFIG_APPLY, queue="gtm-config", cb=respond)
        await config.nc.flush()
        assert (await admin.nc.request(subjects.CONFIG_APPLY, b"{}", timeout=2)).data == b"applied"
        await config.nc.flush()
        assert config.errors == []


# --- shared.bus with a least-privileged user -------------------------------------------------


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[SecuredNats]:
    server = SecuredNats(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_service_user_goes_on_with_a_differing_stream_it_may_not_update(fresh: SecuredNats) -> None:
    fresh.init_streams()
    async with login(fresh, "admin") as admin, login(fresh, "edge") as edge:
        events = next(c for c in bus.STREAMS if c.name == subjects.STREAM_EVENTS)
        await admin.js.update_stream(StreamConfig(**{**vars(events), "max_age": 3600.0}))
        with structlog.testing.capture_logs() as logged:
            await bus.ensure_streams(edge.js_refused)
        assert [(e["event"], e["stream"]) for e in logged] == [("stream_not_updated", subjects.STREAM_EVENTS)]
        assert (await admin.js.stream_info(subjects.STREAM_EVENTS)).config.max_age == 3600.0
        await bus.ensure_streams(admin.js)  # the admin puts it right
        assert (await admin.js.stream_info(subjects.STREAM_EVENTS)).config.max_age == bus.EVENTS_MAX_AGE_S


async def test_a_service_user_fails_clearly_when_the_streams_were_never_declared(fresh: SecuredNats) -> None:
    async with login(fresh, "edge") as edge:
        with structlog.testing.capture_logs() as logged, pytest.raises(nats.errors.TimeoutError):
            await bus.ensure_streams(edge.js_refused)
        assert logged[-1]["event"] == "stream_missing"
        with structlog.testing.capture_logs() as logged, pytest.raises(nats.errors.TimeoutError):
            await bus.config_bucket(edge.js_refused)
        assert logged[-1]["event"] == "bucket_missing"


# --- the whole GTM on least-privileged users -------------------------------------------------

DOMAIN = "www.example.com"
PRIMARY_IP, BACKUP_IP = "127.0.0.2", "127.0.0.3"
CHECK: dict[str, Any] = {"protocol": "http", "interval_s": 1, "timeout_s": 0.5, "failures": 1, "successes": 1}


@pytest.mark.e2e
def test_every_service_runs_as_its_own_user_and_the_edge_answers_and_fails_over(fresh: SecuredNats) -> None:
    fresh.init_streams()
    log_dir = fresh.tmp / "logs"
    log_dir.mkdir()
    api_port, dns_port = free_port(), free_port()
    port = free_port()
    primary = HttpBackend(port=port, host=PRIMARY_IP).start()
    backup = HttpBackend(port=port, host=BACKUP_IP).start()
    procs = [
        Service(name, {**fresh.env(name), "GTM_API_LISTEN": f"127.0.0.1:{api_port}",
                       "GTM_DNS_LISTEN": f"127.0.0.1:{dns_port}"}, log_dir)
        for name in SERVICES
    ]
    try:
        with services(*procs):
            for proc in procs:
                proc.wait_for_event("service_ready", timeout=30)
            api = Api(f"http://127.0.0.1:{api_port}/api/v1")
            for pool, name, ip in (("Primary-DC", "primary", PRIMARY_IP), ("Backup-DC", "backup", BACKUP_IP)):
                body = {"type": "ipv4", "addresses": [{"name": name, "address": ip,
                                                       "health_check": {**CHECK, "port": port}}]}
                assert api.put(f"/pools/{pool}", body)[0] == 201
            domain = {"record_type": "A", "enabled": True, "lb_strategy": "sequence",
                      "pools": [{"pool": "Primary-DC", "sequence": 1}, {"pool": "Backup-DC", "sequence": 2}]}
            assert api.put(f"/domains/{DOMAIN}", domain)[0] == 201
            wait_until(lambda: answer_addresses(dns_query(dns_port, DOMAIN)) == [PRIMARY_IP], timeout=15)

            primary.stop()
            wait_until(lambda: answer_addresses(dns_query(dns_port, DOMAIN)) == [BACKUP_IP], timeout=15)
            status, body = api.get(f"/domains/{DOMAIN}/status")
            assert status == 200 and body["answer"]["pool"] == "Backup-DC"
            assert api.get(f"/events?domain={DOMAIN}&kind=switch&limit=1")[1]["events"][0]["to_pool"] == "Backup-DC"
    finally:
        primary.stop()
        backup.stop()
    refused = [(p.name, e) for p in procs for e in p.events() if "permissions violation" in str(e.get("error", ""))]
    assert refused == []
    assert "Violation" not in fresh.log()

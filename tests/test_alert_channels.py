"""Alert channels: email through a real loopback SMTP server (aiosmtpd), Apprise to a real loopback
HTTP receiver, their validation, and a dead or hung mail server delaying nobody else."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
import structlog
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from services.config import alerts, validation
from services.config.notifier import AlertPolicy, Notifier, TargetWorker, target_decoder
from shared.messages import AddressState, PoolState, SwitchEvent
from shared.resources import AlertTarget, ResourceError
from tests.support import free_port, until

POLICY = AlertPolicy(retry_delays_s=(0.05, 0.1), timeout_s=1.0, queue_size=100)
AT = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SWITCH = SwitchEvent(domain="www.example.com", at=AT, from_pool="Primary-DC", to_pool="Backup-DC",
                     reason="Primary-DC unavailable", before=["192.0.2.1"], after=["198.51.100.1"])


class Mailbox:
    """An aiosmtpd handler that keeps every message it accepts (parsed), and the logins it saw."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's name
        raw = envelope.original_content or b""
        self.messages.append(email.message_from_bytes(raw, policy=email.policy.default))
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword):
            self.logins.append((data.login.decode(), data.password.decode()))
            return AuthResult(success=data.password == b"s3cret", handled=False)
        return AuthResult(success=False, handled=False)


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, str]]:
    """A real SMTP server on 127.0.0.1 (no TLS; AUTH allowed in clear, for the login test)."""
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port, authenticator=box.authenticate,
                            auth_require_tls=False)
    controller.start()
    try:
        yield box, f"127.0.0.1:{port}"
    finally:
        controller.stop()


class Hook:
    """A real loopback HTTP receiver for Apprise's json:// and for plain webhooks."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.posts.append((request.path, await request.json()))
        return web.Response(status=200, text="ok")

    async def start(self) -> Hook:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    made = await Hook().start()
    yield made
    await made.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _mail(smtp: str, **extra: Any) -> AlertTarget:
    fields: dict[str, Any] = {"sender": "gtm@example.test", "to": ["ops@example.test"]} | extra
    return AlertTarget(type="email", smtp=smtp, **fields)


def _domain_alert(console: str = "") -> dict[str, Any]:
    alert = alerts.domain_alert(SWITCH)
    if link := alerts.console_link(console, alert):
        alert["console_url"] = link
    return alert


async def _true(value: bool) -> bool:
    return value


# -- email ------------------------------------------------------------------------------------


async def test_an_email_target_gets_a_mail_naming_the_domain_pools_reason_time_and_console(
    mailbox: tuple[Mailbox, str], session: aiohttp.ClientSession
) -> None:
    box, smtp = mailbox
    target = _mail(smtp, to=["ops@example.test", "oncall@example.test"])
    worker = TargetWorker("mail", target, session, POLICY)
    try:
        assert await worker.deliver(_domain_alert("https://gtm.example.test:8080"))
    finally:
        await worker.stop()
    [msg] = box.messages
    assert box.envelopes == [("gtm@example.test", ["ops@example.test", "oncall@example.test"])]
    assert msg["From"] == "gtm@example.test" and msg["To"] == "ops@example.test, oncall@example.test"
    assert msg["Subject"] == "GTM: www.example.com switched from Primary-DC to Backup-DC: Primary-DC unavailable"
    assert msg["Date"] and msg["Message-ID"]
    body = msg.get_content()
    for line in ("Domain: www.example.com", "Pool before: Primary-DC", "Pool after: Backup-DC",
                 "Reason: Primary-DC unavailable", "Time: 2026-01-01T00:00:00.000Z",
                 "Answer before: 192.0.2.1", "Answer after: 198.51.100.1",
                 "Console: https://gtm.example.test:8080/#/domains/www.example.com"):
        assert line in body.splitlines(), (line, body)
    assert worker.delivered == 1


async def test_pool_and_address_mails_name_the_pool_the_address_and_the_state(
    mailbox: tuple[Mailbox, str], session: aiohttp.ClientSession
) -> None:
    box, smtp = mailbox
    up = PoolState(pool="Primary-DC", available=True, at=AT, addresses=[
        AddressState(name="a", address="192.0.2.1", available=True)])
    down = PoolState(pool="Primary-DC", available=False, at=AT + 1, addresses=[
        AddressState(name="a", address="192.0.2.1", available=False, reason="status 503")])
    watch = alerts.PoolWatch()
    assert watch.observe(up) == []
    address, pool = watch.observe(down)
    worker = TargetWorker("mail", _mail(smtp), session, POLICY)
    try:
        assert await worker.deliver(address) and await worker.deliver(pool)
    finally:
        await worker.stop()
    first, second = box.messages
    assert first["Subject"] == "GTM: address Primary-DC/a (192.0.2.1) is unavailable"
    assert {"Pool: Primary-DC", "Address: a (192.0.2.1)", "State: unavailable", "Reason: status 503",
            "Time: 2026-01-01T00:00:01.000Z"} <= set(first.get_content().splitlines())
    assert second["Subject"] == "GTM: pool Primary-DC is unavailable"
    assert {"Pool: Primary-DC", "State: unavailable", "Reason: 0 of 1 enabled addresses available",
            "Answer before: 192.0.2.1", "Answer after: (none)"} <= set(second.get_content().splitlines())


async def test_an_email_target_with_a_username_logs_in_and_a_wrong_password_is_an_error_not_a_log_line(
    mailbox: tuple[Mailbox, str], session: aiohttp.ClientSession
) -> None:
    box, smtp = mailbox
    good = TargetWorker("good", _mail(smtp, username="gtm", password="s3cret"), session, POLICY)
    bad = TargetWorker("bad", _mail(smtp, username="gtm", password="wrong-pw"), session, POLICY)
    try:
        assert await good.deliver(_domain_alert())
        with structlog.testing.capture_logs() as logs:
            assert not await bad.deliver(_domain_alert())
    finally:
        await good.stop()
        await bad.stop()
    assert box.logins[0] == ("gtm", "s3cret") and len(box.messages) == 1
    [failed] = [e for e in logs if e["event"] == "alert_failed"]
    assert failed["attempts"] == 3 and failed["error"].startswith("smtp 535")
    assert failed["type"] == "email" and failed["smtp"] == smtp and failed["to"] == ["ops@example.test"]
    assert "wrong-pw" not in repr(logs)


async def test_starttls_to_a_server_without_it_fails_instead_of_sending_in_clear(
    mailbox: tuple[Mailbox, str], session: aiohttp.ClientSession
) -> None:
    box, smtp = mailbox
    worker = TargetWorker("tls", _mail(smtp, starttls=True), session, POLICY)
    try:
        with structlog.testing.capture_logs() as logs:
            assert not await worker.deliver(_domain_alert())
    finally:
        await worker.stop()
    assert box.messages == []
    assert "STARTTLS" in next(e for e in logs if e["event"] == "alert_failed")["error"]


async def test_a_dead_smtp_server_is_retried_then_given_up_and_a_hung_one_delays_no_other_target(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    hung_conns: list[asyncio.StreamWriter] = []

    async def never_greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung_conns.append(writer)  # accepted, and never a word: smtplib waits for its greeting

    hung_server = await asyncio.start_server(never_greet, "127.0.0.1", 0)
    hung_port = hung_server.sockets[0].getsockname()[1]
    policy = AlertPolicy(retry_delays_s=(0.05,), timeout_s=2.0, queue_size=10)
    notifier = Notifier(policy, console_url="")
    notifier._session = session
    await notifier.set_target("dead", _mail(f"127.0.0.1:{free_port()}"))  # nothing listens there
    await notifier.set_target("hung", _mail(f"127.0.0.1:{hung_port}"))
    await notifier.set_target("hook", AlertTarget(url=f"http://127.0.0.1:{hook.port}/hook"))
    try:
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            notifier.publish([_domain_alert()])
            assert await until(lambda: _true(len(hook.posts) == 1), timeout=5)
            webhook_took = time.monotonic() - started
            assert await until(lambda: _true(notifier.workers["dead"].failed == 1), timeout=5)
            assert await until(lambda: _true(len(hung_conns) >= 1), timeout=5)
            # the event loop stayed free while the hung server held its target's thread
            tick = time.monotonic()
            await asyncio.sleep(0.01)
            assert time.monotonic() - tick < 0.5
            assert notifier.workers["hung"].delivered == 0 and notifier.workers["hung"].failed == 0
        assert webhook_took < 1.5  # well under the hung server's 2 s timeout
        assert hook.posts[0][1]["domain"] == "www.example.com"
        dead = [e for e in logs if e.get("target") == "dead"]
        assert [e["event"] for e in dead] == ["alert_attempt_failed", "alert_attempt_failed", "alert_failed"]
        assert dead[-1]["attempts"] == 2 and "Connection refused" in dead[-1]["error"]
    finally:
        for name in list(notifier.workers):
            await notifier.set_target(name, None)
        for w in hung_conns:
            w.close()
        hung_server.close()
        await hung_server.wait_closed()


async def test_the_hung_server_is_given_up_after_its_timeout(session: aiohttp.ClientSession) -> None:
    held: list[asyncio.StreamWriter] = []

    async def never_greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(never_greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    worker = TargetWorker("hung", _mail(f"127.0.0.1:{port}"), session,
                          AlertPolicy(retry_delays_s=(), timeout_s=0.3, queue_size=10))
    try:
        started = time.monotonic()
        with structlog.testing.capture_logs() as logs:
            assert not await worker.deliver(_domain_alert())
        assert time.monotonic() - started < 3
        assert "timed out" in next(e for e in logs if e["event"] == "alert_failed")["error"]
    finally:
        await worker.stop()
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


# -- apprise ------------------------------------------------------------------------------------


async def test_an_apprise_json_target_posts_the_title_and_body(hook: Hook, session: aiohttp.ClientSession) -> None:
    worker = TargetWorker("chat", AlertTarget(type="apprise", url=f"json://127.0.0.1:{hook.port}/hook"),
                          session, POLICY)
    try:
        with structlog.testing.capture_logs() as logs:
            assert await worker.deliver(_domain_alert("http://127.0.0.1:8080"))
    finally:
        await worker.stop()
    [(path, body)] = hook.posts
    assert path == "/hook"
    assert body["title"] == "GTM: www.example.com switched from Primary-DC to Backup-DC: Primary-DC unavailable"
    lines = body["message"].splitlines()
    assert {"Domain: www.example.com", "Pool before: Primary-DC", "Pool after: Backup-DC",
            "Reason: Primary-DC unavailable", "Time: 2026-01-01T00:00:00.000Z",
            "Console: http://127.0.0.1:8080/#/domains/www.example.com"} <= set(lines)
    assert [e["event"] for e in logs if e.get("target") == "chat"] == ["alert_sent"]


async def test_an_apprise_target_that_cannot_send_is_retried_and_logged_with_its_secrets_masked(
    session: aiohttp.ClientSession
) -> None:
    url = f"json://user:topsecretpw@127.0.0.1:{free_port()}/hook"  # nothing listens
    worker = TargetWorker("chat", AlertTarget(type="apprise", url=url), session, POLICY)
    try:
        with structlog.testing.capture_logs() as logs:
            assert not await worker.deliver(_domain_alert())
    finally:
        await worker.stop()
    failed = next(e for e in logs if e["event"] == "alert_failed")
    assert failed["attempts"] == 3 and failed["type"] == "apprise" and failed["url"].startswith("json://")
    assert "topsecretpw" not in repr(logs)


# -- stored targets, links ---------------------------------------------------------------------


def test_a_webhook_stored_before_there_were_types_decodes_as_a_webhook() -> None:
    old = b'{"url":"http://127.0.0.1:9/hook","name":"ops","enabled":true,"kinds":["domain"],"remarks":"","revision":3}'
    target = target_decoder.decode(old)
    assert (target.type, target.url, target.kinds, target.to, target.sender) == (
        "webhook", "http://127.0.0.1:9/hook", ["domain"], [], "")


def test_email_fields_use_their_json_names() -> None:
    body = b'{"type":"email","smtp":"127.0.0.1:2525","from":"gtm@example.test","to":["ops@example.test"]}'
    target = msgspec.json.decode(body, type=AlertTarget)
    assert target.sender == "gtm@example.test" and validation.validate_alert_target(target, "mail").name == "mail"
    assert msgspec.to_builtins(target)["from"] == "gtm@example.test"


def test_console_links_follow_the_console_routes_and_are_left_out_without_a_base(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    alert = _domain_alert()
    assert alerts.console_link("", alert) == ""
    assert alerts.console_link("http://c:8080", alert) == "http://c:8080/#/domains/www.example.com"
    assert alerts.console_link("http://c", {"kind": "pool", "pool": "Primary-DC"}) == "http://c/#/pools/Primary-DC"
    assert "Console:" not in alerts.alert_text(alert)[1]
    monkeypatch.setenv("GTM_CONSOLE_URL", "https://gtm.example.test/ ")
    assert Notifier().console_url == "https://gtm.example.test"
    monkeypatch.delenv("GTM_CONSOLE_URL")
    assert Notifier().console_url == ""


# -- validation ----------------------------------------------------------------------------------

MAIL: dict[str, Any] = {"type": "email", "smtp": "127.0.0.1:2525", "from": "gtm@example.test",
                        "to": ["ops@example.test"]}


def _check(doc: dict[str, Any]) -> AlertTarget:
    return validation.validate_alert_target(msgspec.convert(doc, AlertTarget), "ops")


@pytest.mark.parametrize(
    "doc",
    [MAIL, MAIL | {"starttls": True, "username": "gtm", "password": "pw"}, MAIL | {"smtp": "[::1]:25"},
     MAIL | {"smtp": "mail.example.test:587", "to": ["a@example.test", "b@example.test"]},
     {"type": "apprise", "url": "json://127.0.0.1:9000/hook"},
     {"type": "apprise", "url": "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"},
     {"type": "apprise", "url": "mailto://user:pass@example.test"},
     {"type": "webhook", "url": "https://hooks.example.test/x"}, {"url": "http://127.0.0.1/x"}],
)
def test_good_targets_pass(doc: dict[str, Any]) -> None:
    assert _check(doc).name == "ops"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (MAIL | {"smtp": ""}, "smtp"), (MAIL | {"smtp": "mail.example.test"}, "smtp"),
        (MAIL | {"smtp": "h:0"}, "smtp"), (MAIL | {"smtp": "h:99999"}, "smtp"), (MAIL | {"smtp": "h:x"}, "smtp"),
        (MAIL | {"smtp": "h:25\r\nRSET"}, "smtp"), (MAIL | {"smtp": "smtp://h:25"}, "smtp"),
        (MAIL | {"from": ""}, "from"), (MAIL | {"from": "gtm"}, "from"), (MAIL | {"from": "g@t@m"}, "from"),
        (MAIL | {"from": "gtm @example.test"}, "from"), (MAIL | {"from": "gtm@example.test\r\nBcc: x@y"}, "from"),
        (MAIL | {"to": []}, "to"), (MAIL | {"to": ["ops@example.test", "nobody"]}, "to[1]"),
        (MAIL | {"to": ["ops@example.test\nBcc: x@y"]}, "to[0]"), (MAIL | {"to": ["a@b, c@d"]}, "to[0]"),
        (MAIL | {"password": "pw"}, "password"), (MAIL | {"username": "u\r\n"}, "username"),
        (MAIL | {"url": "http://h/"}, "url"),
        ({"type": "webhook", "url": "http://h/", "smtp": "h:25"}, "smtp"),
        ({"url": "http://h/", "from": "a@b"}, "from"), ({"url": "http://h/", "to": ["a@b"]}, "to"),
        ({"url": "http://h/", "starttls": True}, "starttls"), ({"url": "http://h/", "password": "x"}, "password"),
        ({"type": "webhook"}, "url"), ({"url": "json://h/x"}, "url"),
        ({"type": "apprise"}, "url"), ({"type": "apprise", "url": "nosuch://h/x"}, "url"),
        ({"type": "apprise", "url": "http://h/x"}, "url"), ({"type": "apprise", "url": "json://h/\r\nx"}, "url"),
        ({"type": "apprise", "url": "json://h/x", "to": ["a@b"]}, "to"),
        ({"type": "apprise", "url": "json://h/x", "username": "u"}, "username"),
    ],
)
def test_each_bad_field_is_named(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(ResourceError) as err:
        _check(doc)
    assert err.value.field == field, err.value.message


def test_an_unknown_type_is_refused_by_decoding() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.type"):
        msgspec.convert({"type": "pigeon", "url": "http://h/"}, AlertTarget)

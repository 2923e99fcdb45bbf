"""The alert notifier: webhook POSTs, emails and Apprise notifications for domain, pool and address switches.

Targets come from the ``alerts.`` keys of the config bucket (watched live).  Each target has
its own bounded queue and worker, so a slow or dead target delays nobody else; NATS callbacks
only enqueue and never wait on HTTP.  SMTP and Apprise are blocking libraries: each such target
sends from a thread of its own, so a hung mail server holds only its own target, never the
event loop nor another target.

Every alert names, when ``GTM_CONSOLE_URL`` (read once, at start) is set, the console page of
what it is about: ``<GTM_CONSOLE_URL>/#/domains/<fqdn>`` or ``.../#/pools/<pool>``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.message
import email.utils
import functools
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import apprise
import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from services.config.alerts import Alert, PoolWatch, alert_text, console_link, domain_alert, smtp_endpoint, wanted
from services.config.backend import Backend
from shared import bus, subjects
from shared.messages import SwitchEvent, event_decoder, pool_state_decoder
from shared.resources import AlertTarget
from shared.settings import load

log = structlog.get_logger(__name__)

target_decoder = msgspec.json.Decoder(AlertTarget)


def send_email(target: AlertTarget, title: str, body: str, timeout_s: float) -> str:
    """Blocking: one mail of ``body`` through the target's SMTP server; "" once it is accepted, else an error."""
    msg = email.message.EmailMessage()
    msg["Subject"] = title
    msg["From"] = target.sender
    msg["To"] = ", ".join(target.to)
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=target.sender.rpartition("@")[2] or None)
    msg.set_content(body)
    host, port = smtp_endpoint(target.smtp)
    with smtplib.SMTP(host, port, timeout=timeout_s) as smtp:
        if target.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if target.username:
            smtp.login(target.username, target.password)
        refused = smtp.send_message(msg, from_addr=target.sender, to_addrs=list(target.to))
    if refused:  # some recipients have it: sending again would repeat it to them
        log.warning("alert_recipients_refused", smtp=target.smtp, refused=sorted(refused))
    return ""


def send_apprise(target: AlertTarget, title: str, body: str, timeout_s: float) -> str:
    """Blocking: one notification to the target's Apprise URL; "" when Apprise reports it sent, else an error."""
    notifier = apprise.Apprise()
    if not notifier.add(target.url):
        return "apprise does not accept the url"
    for service in notifier:
        service.socket_connect_timeout = service.socket_read_timeout = timeout_s
    return "" if notifier.notify(body=body, title=title) else "apprise could not send it (see the apprise log)"


def describe(target: AlertTarget) -> dict[str, Any]:
    """Where a target sends, for logs: no passwords, and an Apprise URL's secrets masked."""
    if target.type == "email":
        return {"type": "email", "smtp": target.smtp, "to": list(target.to)}
    if target.type == "apprise":
        notifier = apprise.Apprise()
        with contextlib.suppress(Exception):  # a bad URL is only not described
            notifier.add(target.url)
        masked = [str(s.url(privacy=True)) for s in notifier]  # type: ignore[no-untyped-call]  # apprise: untyped
        return {"type": "apprise", "url": " ".join(masked) or "(invalid)"}
    return {"type": "webhook", "url": target.url}


@dataclass(frozen=True)
class AlertPolicy:
    """How hard to try: the waits between attempts, one attempt's timeout, queue size per target."""

    retry_delays_s: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    timeout_s: float = 5.0
    queue_size: int = 1000


class TargetWorker:
    """One target: a bounded queue and the task that sends from it, with retries (its thread for SMTP, Apprise)."""

    def __init__(self, name: str, target: AlertTarget, session: aiohttp.ClientSession, policy: AlertPolicy) -> None:
        self.name = name
        self.target = target
        self.session = session
        self.policy = policy
        self.queue: asyncio.Queue[Alert] = asyncio.Queue(policy.queue_size)
        self.delivered = self.failed = self.dropped = 0
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None  # made on the first email or apprise
        self.task = asyncio.create_task(self._run(), name=f"alerts-{name}")

    def offer(self, alert: Alert) -> None:
        """Queue ``alert`` if the target wants it; drop it (logged) when the queue is full."""
        if not wanted(self.target, alert):
            return
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("alert_dropped", target=self.name, kind=alert["kind"], queued=self.queue.qsize())

    async def stop(self) -> None:
        """Cancel the worker (undelivered alerts are dropped)."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)  # a send under way ends by its timeout
            self._thread = None

    async def _run(self) -> None:
        while True:
            alert = await self.queue.get()
            await self.deliver(alert)

    async def deliver(self, alert: Alert) -> bool:
        """Send ``alert``, retrying with backoff; log ``alert_failed`` after the last attempt."""
        attempts = 0
        for delay in (*self.policy.retry_delays_s, None):
            attempts += 1
            error = await self._send(alert)
            if not error:
                self.delivered += 1
                log.info("alert_sent", target=self.name, kind=alert["kind"], attempts=attempts)
                return True
            log.info("alert_attempt_failed", target=self.name, kind=alert["kind"], attempt=attempts, error=error)
            if delay is None:
                break
            await asyncio.sleep(delay)
        self.failed += 1
        log.error("alert_failed", target=self.name, **describe(self.target), kind=alert["kind"], attempts=attempts,
                  error=error, message=alert["message"])
        return False

    async def _send(self, alert: Alert) -> str:
        """One attempt by the target's type: "" when sent, else a short error."""
        target = self.target  # as it is now: a change applies from the next attempt
        if target.type == "webhook":
            return await self._post(msgspec.json.encode(alert))
        send = send_email if target.type == "email" else send_apprise
        title, body = alert_text(alert)
        return await self._in_thread(functools.partial(send, target, title, body, self.policy.timeout_s))

    async def _in_thread(self, call: Callable[[], str]) -> str:
        """Run a blocking send in this target's own thread; its exception as the error."""
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"alerts-{self.name}")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, call)
        except TimeoutError:
            return "timeout"
        except smtplib.SMTPResponseException as exc:  # the server's answer, never what was sent
            text = exc.smtp_error
            return f"smtp {exc.smtp_code}: {text.decode(errors='replace') if isinstance(text, bytes) else text}"
        except Exception as exc:  # noqa: BLE001 - whatever fails, it is this attempt's error
            return f"error: {exc!r}"

    async def _post(self, body: bytes) -> str:
        """One attempt: "" on a 2xx answer, else a short error."""
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout_s)
        headers = {"Content-Type": "application/json"}
        try:
            async with self.session.post(self.target.url, data=body, headers=headers, timeout=timeout) as resp:
                return "" if 200 <= resp.status < 300 else f"status {resp.status}"
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError as exc:
            return f"error: {exc}"
        except Exception as exc:  # noqa: BLE001 - whatever fails, it is this attempt's error
            return f"error: {exc!r}"


class Notifier:
    """Turns switch events and pool states into alerts for every interested target."""

    def __init__(self, policy: AlertPolicy | None = None, *, console_url: str | None = None) -> None:
        self.policy = policy or AlertPolicy()
        base = load("config").api.console_url if console_url is None else console_url
        self.console_url = base.strip().rstrip("/")  # "" = no console links
        self.pools = PoolWatch()
        self.workers: dict[str, TargetWorker] = {}
        self.ready = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    def publish(self, alerts: list[Alert]) -> None:
        """Hand every alert to every target (each filters by its kinds), with its console link."""
        for alert in alerts:
            if link := console_link(self.console_url, alert):
                alert["console_url"] = link
            for worker in self.workers.values():
                worker.offer(alert)

    async def set_target(self, name: str, target: AlertTarget | None) -> None:
        """Add, change or (None) remove a target; a changed target keeps its queue."""
        worker = self.workers.get(name)
        if target is None:
            if worker is not None:
                await self.workers.pop(name).stop()
        elif worker is not None:
            worker.target = target
        else:
            assert self._session is not None
            self.workers[name] = TargetWorker(name, target, self._session, self.policy)

    async def on_switch(self, msg: Msg) -> None:
        """JetStream callback: a domain switch."""
        try:
            event = event_decoder.decode(msg.data)
            if isinstance(event, SwitchEvent):
                self.publish([domain_alert(event)])
        except Exception as exc:  # noqa: BLE001 - a callback never dies on a bad message
            log.warning("bad_switch_event", subject=msg.subject, error=str(exc))

    async def on_pool_state(self, msg: Msg) -> None:
        """JetStream callback: a pool's new state."""
        try:
            self.publish(self.pools.observe(pool_state_decoder.decode(msg.data)))
        except Exception as exc:  # noqa: BLE001 - a callback never dies on a bad message
            log.warning("bad_pool_state", subject=msg.subject, error=str(exc))

    async def run(self, backend: Backend, *, retry_s: float = 1.0) -> None:
        """Once the backend is up: follow targets, pool states and switches until cancelled."""
        await backend.ready.wait()
        self._session = self._session or aiohttp.ClientSession()
        while True:
            try:
                await self._follow(backend)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alerts_follow_failed")
            await asyncio.sleep(retry_s)

    async def _follow(self, backend: Backend) -> None:
        assert backend.js is not None and backend.kv is not None
        watcher: Any = await backend.kv.watch(f"{subjects.ALERT_PREFIX}>")  # nats.py is untyped here
        subs = [watcher]
        try:
            subs.append(await backend.js.subscribe(
                subjects.POOL_STATE_ALL, stream=subjects.STREAM_POOL_STATE, cb=self.on_pool_state,
                ordered_consumer=True, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ))
            subs.append(await backend.js.subscribe(
                subjects.SWITCH_EVENTS_ALL, stream=subjects.STREAM_EVENTS, cb=self.on_switch,
                ordered_consumer=True, deliver_policy=DeliverPolicy.NEW,
            ))
            self.ready.set()
            log.info("alerts_ready")
            async for entry in watcher:
                if entry is not None:
                    await self._apply_entry(entry)
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):  # NATS may be away
                    await (sub.stop() if sub is watcher else sub.unsubscribe())

    async def _apply_entry(self, entry: Any) -> None:
        _, name = subjects.parse_config_key(entry.key)
        if entry.operation in bus.DELETE_OPS or not entry.value:
            await self.set_target(name, None)
            return
        try:
            await self.set_target(name, target_decoder.decode(entry.value))
        except msgspec.DecodeError as exc:
            log.warning("bad_alert_target", name=name, error=str(exc))

    async def close(self) -> None:
        """Stop every worker and close the HTTP session."""
        for worker in list(self.workers.values()):
            await worker.stop()
        self.workers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

"""Publication order equals decision order: no older answer can overwrite a newer one."""

from __future__ import annotations

import asyncio
import time

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from services.scheduler.engine import next_revision
from services.scheduler.service import Scheduler
from shared import bus, subjects
from shared.messages import AnswerSet, ProbeResult, answer_set_decoder, encoder
from tests.test_scheduler_service import DOMAIN, domain, pools


def _result(pool: str, address: str, *, ok: bool) -> Msg:
    key = subjects.address_key(pool, address)
    result = ProbeResult(
        region="local", prober="test", key=key, pool=pool, address=address, target="x",
        protocol="http", ok=ok, error="" if ok else "connection refused", at=time.time(),
    )
    return Msg(_client=None, subject=subjects.probe_result("local", key), data=encoder.encode(result))  # type: ignore[arg-type]


async def _one_entry(entry: KeyValue.Entry):  # type: ignore[no-untyped-def]
    yield entry


async def _leader(nc: Client) -> Scheduler:
    """A deciding scheduler with both pools healthy and the walkthrough's domain answered."""
    js = nc.jetstream()
    await bus.ensure_streams(js)
    scheduler = Scheduler(js)
    now, at = time.monotonic(), time.time()
    for name, pool in pools().items():
        scheduler.engine.set_pool(name, pool, now=now, at=at)
    scheduler.engine.set_domain(DOMAIN, domain(), 1, at=at)
    await scheduler.publish(scheduler.engine.take_over([], [], now=now, at=at))
    await scheduler.on_probe_result(_result("Primary-DC", "Primary-Server-01", ok=True))
    await scheduler.on_probe_result(_result("Backup-DC", "Backup-Server-01", ok=True))
    return scheduler


async def _served(nc: Client) -> AnswerSet:
    """What an edge would serve: the last answer the stream keeps for the domain."""
    raw = await nc.jetstream().get_last_msg(subjects.STREAM_ANSWERS, subjects.answers(DOMAIN))
    return answer_set_decoder.decode(raw.data)


async def test_a_probe_decision_queued_behind_a_config_change_is_made_after_it(nc: Client) -> None:
    # The interleaving that used to publish a stale answer last: a step holds the lock, a config
    # change queues for it, then a probe result arrives.  The probe's decision must see the config.
    scheduler = await _leader(nc)
    assert (await _served(nc)).records == ["10.0.0.1"]
    new_domain = msgspec.json.encode(msgspec.structs.replace(domain(), ttl=60))
    entry = KeyValue.Entry(
        bucket=subjects.CONFIG_BUCKET, key=subjects.domain_key(DOMAIN), value=new_domain,
        revision=2, delta=0, created=None, operation=None,
    )
    await scheduler.lock.acquire()  # a step in progress (a tick, another result) holds the lock
    config = asyncio.create_task(scheduler.watch_config(_one_entry(entry)))  # type: ignore[arg-type]
    for _ in range(5):
        await asyncio.sleep(0)  # the config step now waits for the lock
    probe = asyncio.create_task(scheduler.on_probe_result(_result("Primary-DC", "Primary-Server-01", ok=False)))
    for _ in range(5):
        await asyncio.sleep(0)
    scheduler.lock.release()
    await asyncio.wait_for(asyncio.gather(config, probe), 10)

    served = await _served(nc)
    assert served.records == ["10.0.1.1"]  # the primary's failure is served ...
    assert served.ttl == 60  # ... with the config that was written before it was decided
    assert served == scheduler.engine.answers[DOMAIN]  # and the engine knows what edges serve


async def test_every_published_answer_has_a_higher_revision_than_the_one_before(nc: Client) -> None:
    scheduler = await _leader(nc)
    seen = [(await _served(nc)).revision]
    for ok in (False, True, False, True):
        await scheduler.on_probe_result(_result("Primary-DC", "Primary-Server-01", ok=ok))
        seen.append((await _served(nc)).revision)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_the_revision_rises_even_when_the_clock_steps_back() -> None:
    previous = AnswerSet(domain=DOMAIN, enabled=True, record_type="A", revision=2_000_000_000_000)
    assert next_revision(previous, at=1_000_000.0) == 2_000_000_000_001
    assert next_revision(None, at=1_000_000.0) == 1_000_000_000
    assert next_revision(previous, at=3_000_000_000.0) == 3_000_000_000_000

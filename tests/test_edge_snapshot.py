"""The edge's disk snapshot (format, checksum, atomic writes) and the table's revision guard (no I/O but files)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from services.edge import snapshot, store
from services.edge.feed import stream_position
from services.edge.responder import Responder
from services.edge.snapshot import Snapshot, SnapshotError
from services.edge.table import AnswerTable, StaleAnswer
from services.edge.topology import RegionMap
from shared.messages import AnswerGroup, AnswerSet, encoder
from shared.resources import Topology, TopologyEntry
from tests.support import answer_addresses
from tests.test_edge_snapshot_service import geo_set


def a_set(domain: str, *records: str, revision: int = 0, deleted: bool = False, **kw: object) -> AnswerSet:
    """An enabled A AnswerSet of ``domain`` with one group of ``records``."""
    groups = [AnswerGroup(pool="p", records=list(records))] if records else []
    kw.setdefault("enabled", True)
    return AnswerSet(
        domain=domain,
        record_type="A",
        groups=groups,
        records=list(records),
        revision=revision,
        deleted=deleted,
        **kw,  # type: ignore[arg-type]
    )


def served(table: AnswerTable, name: str, qtype: str = "A", **query: object) -> list[str] | str:
    """What ``table`` answers for ``name``: the addresses, or the rcode's name when not NOERROR."""
    q = dns.message.make_query(name, qtype, **query)  # type: ignore[arg-type]
    reply = Responder(table).answer(q.to_wire())
    assert reply is not None
    msg = dns.message.from_wire(reply)
    return answer_addresses(msg) if msg.rcode() == 0 else dns.rcode.to_text(msg.rcode())


def file_of(table: AnswerTable, *, sequence: int = 0, written_at: float = 1.7e9) -> bytes:
    """The snapshot file of ``table``."""
    meta = Snapshot(written_at=written_at, stream_sequence=sequence, topology=table.topology)
    return snapshot.encode(meta, table.encoded())


# -- the revision guard ------------------------------------------------------------------------

R = 1_700_000_000_000  # a scheduler revision: milliseconds since the epoch


@pytest.mark.parametrize(
    ("steps", "final", "ignored"),
    [
        # (revision, records or None for a tombstone) applied in order -> what is served, which were ignored
        ([(R, "192.0.2.1"), (R + 1, "192.0.2.2")], ["192.0.2.2"], []),
        ([(R + 1, "192.0.2.2"), (R, "192.0.2.1")], ["192.0.2.2"], [1]),  # a late older answer
        ([(R, "192.0.2.1"), (R, "192.0.2.9")], ["192.0.2.9"], []),  # equal: applied again (idempotent)
        ([(R, "192.0.2.1"), (0, "192.0.2.3")], ["192.0.2.3"], []),  # 0: an old publisher, always applied
        ([(0, "192.0.2.3"), (R, "192.0.2.1")], ["192.0.2.1"], []),
        ([(R + 5, None), (R + 1, "192.0.2.1")], "REFUSED", [1]),  # a tombstone is not resurrected by older
        ([(R + 5, None), (R + 6, "192.0.2.6")], ["192.0.2.6"], []),  # but is by newer
        ([(R + 5, "192.0.2.5"), (R + 1, None)], ["192.0.2.5"], [1]),  # an older tombstone deletes nothing
        ([(R + 5, None), (0, None), (R, "192.0.2.1")], ["192.0.2.1"], []),  # a 0 tombstone forgets the revision
        ([(R + 2, "192.0.2.2"), (R + 1, "192.0.2.1"), (R + 3, "192.0.2.3")], ["192.0.2.3"], [1]),
    ],
)
def test_an_answer_older_than_the_installed_one_is_ignored(
    steps: list[tuple[int, str | None]], final: list[str] | str, ignored: list[int]
) -> None:
    table = AnswerTable()
    refused = []
    for i, (revision, record) in enumerate(steps):
        if record is None:
            aset = a_set("g.example.com", revision=revision, deleted=True)
        else:
            aset = a_set("g.example.com", record, revision=revision)
        try:
            table.apply(aset)
        except StaleAnswer as stale:
            assert (stale.domain, stale.offered) == ("g.example.com", revision)
            assert stale.installed > revision
            refused.append(i)
    assert refused == ignored
    assert served(table, "g.example.com") == final


@given(st.lists(st.tuples(st.integers(1, 4), st.booleans(), st.integers(1, 9)), min_size=1, max_size=12))
def test_whatever_the_arrival_order_the_last_of_the_newest_revision_wins(steps: list[tuple[int, bool, int]]) -> None:
    table = AnswerTable()
    for revision, deleted, octet in steps:
        with contextlib.suppress(StaleAnswer):
            table.apply(a_set("h.example.com", f"192.0.2.{octet}", revision=revision, deleted=deleted))
    newest = max(revision for revision, _, _ in steps)
    _, deleted, octet = [step for step in steps if step[0] == newest][-1]
    assert served(table, "h.example.com") == ("REFUSED" if deleted else [f"192.0.2.{octet}"])
    assert table.revision(b"\x01h\x07example\x03com\x00") == newest


def test_the_guard_is_per_name_and_case_blind() -> None:
    table = AnswerTable()
    table.apply(a_set("One.Example.com", "192.0.2.1", revision=R + 10))
    table.apply(a_set("two.example.com", "192.0.2.2", revision=R))  # another name: its own revision
    with pytest.raises(StaleAnswer):
        table.apply(a_set("one.example.COM.", "192.0.2.9", revision=R + 9))
    assert served(table, "one.example.com") == ["192.0.2.1"]
    assert table.revision(b"\x03one\x07example\x03com\x00") == R + 10


def test_a_tombstone_for_an_unusable_name_is_a_no_op() -> None:
    table = AnswerTable()
    assert table.apply(a_set("bad..name", deleted=True, revision=R)) is None
    assert not table.tombstones and len(table) == 0


@pytest.mark.parametrize(
    ("reply", "position"),
    [
        ("$JS.ACK.ANSWERS.c1.1.42.7.1700000000000000000.3", (42, 3)),
        ("$JS.ACK.hub.ACCHASH.ANSWERS.c1.1.42.7.1700000000000000000.0.tok", (42, 0)),
    ],
)
def test_the_stream_position_is_read_from_the_reply_subject(reply: str, position: tuple[int, int]) -> None:
    assert stream_position(reply) == position
    with pytest.raises(ValueError):
        stream_position("_INBOX.abc")


# -- resync: live data replaces what the disk said ----------------------------------------------


def test_end_resync_drops_the_names_the_live_snapshot_did_not_carry() -> None:
    table = AnswerTable()
    for name in ("keep", "gone", "changed"):
        table.apply(a_set(f"{name}.example.com", "192.0.2.1", revision=R))
    table.apply(a_set("dead.example.com", revision=R, deleted=True))
    table.begin_resync()
    table.apply(a_set("keep.example.com", "192.0.2.1", revision=R))
    table.apply(a_set("changed.example.com", "192.0.2.7", revision=R + 1))
    gone = table.end_resync()
    assert gone == ["gone.example.com"]
    assert served(table, "gone.example.com") == "REFUSED"
    assert served(table, "changed.example.com") == ["192.0.2.7"]
    assert served(table, "keep.example.com") == ["192.0.2.1"]
    assert not table.tombstones  # not in the live stream either: forgotten
    table.apply(a_set("gone.example.com", "192.0.2.8"))  # no resync running: nothing noted, nothing dropped
    assert served(table, "gone.example.com") == ["192.0.2.8"]


def test_a_stale_answer_during_resync_still_counts_as_live() -> None:
    table = AnswerTable()
    table.apply(a_set("s.example.com", "192.0.2.2", revision=R + 2))
    table.begin_resync()
    with pytest.raises(StaleAnswer):
        table.apply(a_set("s.example.com", "192.0.2.1", revision=R + 1))
    assert table.end_resync() == []
    assert served(table, "s.example.com") == ["192.0.2.2"]


# -- the file format ------------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){1,3}", fullmatch=True)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
answer_sets = st.builds(
    a_set,
    names,
    ipv4,
    revision=st.integers(0, 2**53),
    deleted=st.booleans(),
    enabled=st.booleans(),
    ttl=st.integers(0, 86400),
    published_at=st.floats(0, 2e9),
)
metas = st.builds(
    Snapshot,
    written_at=st.floats(0, 2e9),
    stream_sequence=st.integers(0, 2**63),
    topology=st.one_of(st.none(), st.binary(max_size=64)),
)


@given(meta=metas, answers=st.lists(answer_sets, max_size=12), chunk=st.integers(1, 5))
def test_a_snapshot_decodes_to_what_was_encoded(meta: Snapshot, answers: list[AnswerSet], chunk: int) -> None:
    parts = list(snapshot.body_parts(meta, [encoder.encode(a) for a in answers], chunk=chunk))
    data = snapshot.header(parts) + b"".join(parts)
    assert snapshot.decode(data) == msgspec.structs.replace(meta, answers=answers)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(answers=st.lists(answer_sets, min_size=1, max_size=4), data=st.data())
def test_any_flipped_bit_truncation_or_extra_byte_is_rejected(answers: list[AnswerSet], data: st.DataObject) -> None:
    good = snapshot.encode(Snapshot(written_at=1.0), [encoder.encode(a) for a in answers])
    position = data.draw(st.integers(0, len(good) - 1))
    flipped = bytearray(good)
    flipped[position] ^= 1 << data.draw(st.integers(0, 7))
    cut = data.draw(st.integers(0, len(good) - 1))
    for damaged in (bytes(flipped), good[:cut], good + b"x", good + b"\n"):
        with pytest.raises(SnapshotError):
            snapshot.decode(damaged)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"gtm-edge-snapshot/1 sha256=", "truncated"),
        (b"something else\n{}", "unknown_format"),
        (b"gtm-edge-snapshot/1 sha256=abc bytes=2\n{}", "bad_header"),
        (b"gtm-edge-snapshot/1 sha256=" + b"0" * 64 + b" bytes=3\n{}", "truncated"),
        (b"gtm-edge-snapshot/1 sha256=" + b"0" * 64 + b" bytes=1\n{}", "length_mismatch"),
        (b"gtm-edge-snapshot/1 sha256=" + b"0" * 64 + b" bytes=2\n{}", "checksum_mismatch"),
        (snapshot.encode(Snapshot(written_at=1.0), [b'{"not":"an answer set"}']), "undecodable"),
    ],
)
def test_a_rejection_says_why(data: bytes, reason: str) -> None:
    with pytest.raises(SnapshotError) as err:
        snapshot.decode(data)
    assert err.value.reason == reason


def test_a_restored_table_answers_like_the_one_written_and_keeps_its_revisions() -> None:
    table = AnswerTable()
    table.apply(a_set("www.example.com", "192.0.2.1", "192.0.2.2", revision=R))
    table.apply(a_set("off.example.com", "192.0.2.3", revision=R, enabled=False))
    table.apply(a_set("dead.example.com", revision=R + 7, deleted=True))
    table.apply(geo_set())
    topology = msgspec.json.encode(Topology(entries=[TopologyEntry(cidr="192.0.2.0/24", region="eu")]))
    table.set_topology(topology, RegionMap.from_value(topology))

    restored = AnswerTable()
    store.restore(restored, snapshot.decode(file_of(table, sequence=42)))
    assert served(restored, "www.example.com") == ["192.0.2.1", "192.0.2.2"]
    assert served(restored, "off.example.com") == "REFUSED"
    assert served(restored, "dead.example.com") == "REFUSED"
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    assert served(restored, "geo.example.com", use_edns=0, options=[ecs]) == ["10.0.0.2"]  # topology came along
    with pytest.raises(StaleAnswer):  # a restarted edge refuses older answers too
        restored.apply(a_set("dead.example.com", "192.0.2.66", revision=R + 6))
    with pytest.raises(StaleAnswer):
        restored.apply(a_set("www.example.com", "192.0.2.66", revision=R - 1))
    assert sorted(restored.encoded()) == sorted(table.encoded())


# -- files: atomic writes, damaged files, the writer --------------------------------------------


def test_path_is_per_listen_address_and_off_when_empty(tmp_path: Path) -> None:
    assert store.path_for(str(tmp_path), "127.0.0.1", 5300) == tmp_path / "answers-127.0.0.1-5300.json"
    assert store.path_for(str(tmp_path), "::1", 53) == tmp_path / "answers-__1-53.json"
    assert store.path_for("", "127.0.0.1", 5300) is None


def test_a_damaged_file_is_rejected_with_a_log_line(tmp_path: Path) -> None:
    table = AnswerTable()
    table.apply(a_set("www.example.com", "192.0.2.1"))
    path = tmp_path / "answers.json"
    good = file_of(table)
    path.write_bytes(good[: len(good) // 2])
    with capture_logs() as logs:
        assert store.read(path) is None
        path.write_bytes(good)
        assert store.read(path) == snapshot.decode(good)
        assert store.read(tmp_path / "missing.json") is None
    events = [(e["event"], e.get("reason")) for e in logs]
    assert events == [("snapshot_rejected", "truncated"), ("snapshot_absent", None)]


def test_readers_never_see_half_a_file_while_writers_replace_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "answers.json"
    tables = []
    for n in (1, 400):  # a small and a big table, so that writes take different times
        table = AnswerTable()
        for i in range(n):
            table.apply(a_set(f"d{i}.example.com", "192.0.2.1", revision=R + i))
        tables.append(table)
    meta = Snapshot(written_at=1.0)
    bodies = [list(snapshot.body_parts(meta, t.encoded())) for t in tables]
    store.write_atomic(path, bodies[0])
    done = threading.Event()

    def write(parts: list[bytes]) -> None:
        while not done.is_set():
            store.write_atomic(path, parts)

    writers = [threading.Thread(target=write, args=(parts,)) for parts in bodies]
    for w in writers:
        w.start()
    try:
        sizes = {len(snapshot.decode(path.read_bytes()).answers) for _ in range(200)}  # raises if ever damaged
    finally:
        done.set()
        for w in writers:
            w.join()
    assert sizes <= {1, 400}
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


async def test_the_writer_writes_at_once_and_again_at_the_end_after_a_change(tmp_path: Path) -> None:
    table = AnswerTable()
    table.apply(a_set("www.example.com", "192.0.2.1", revision=R))
    path = tmp_path / "answers.json"
    stale_tmp = tmp_path / ".answers.json.left.tmp"
    stale_tmp.write_bytes(b"half")
    os.utime(stale_tmp, (1.0, 1.0))
    writer = store.SnapshotWriter(path, table, lambda: 7)
    async with writer.running():
        await asyncio.sleep(0)  # the first write happens in the writer's own task
        while not path.exists():
            await asyncio.sleep(0.01)
        first = snapshot.decode(path.read_bytes())
        assert (first.stream_sequence, [a.domain for a in first.answers]) == (7, ["www.example.com"])
        table.apply(a_set("new.example.com", "192.0.2.2", revision=R))
    last = snapshot.decode(path.read_bytes())
    assert sorted(a.domain for a in last.answers) == ["new.example.com", "www.example.com"]
    assert not stale_tmp.exists()


async def test_an_unwritable_directory_is_logged_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    table = AnswerTable()
    table.apply(a_set("www.example.com", "192.0.2.1"))
    with capture_logs() as logs:
        assert not await store.SnapshotWriter(blocker / "answers.json", table, lambda: 0).write()
    assert logs[0]["event"] == "snapshot_write_failed"

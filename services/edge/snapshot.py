"""The edge's answer snapshot on disk: format, checksum, encoding in pieces (no I/O).

A file is one header line and a JSON body::

    gtm-edge-snapshot/1 sha256=<hex digest of the body> bytes=<length of the body>
    {"type":"edge_snapshot.v1","written_at":...,"answers":[<AnswerSet>,...]}

The header makes a truncated, padded or bit-flipped file fail before a single
answer is believed.  The body is built from the AnswerSets as the table keeps
them (already encoded), in pieces, so that a writer can hand the event loop
back between pieces; ``answers`` is the last field for that reason.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence

import msgspec
from msgspec import Struct

from shared.messages import AnswerSet

FORMAT = b"gtm-edge-snapshot/1"
CHUNK = 500  # AnswerSets joined per piece: ~0.1 ms of the loop each


class SnapshotError(ValueError):
    """A snapshot file that must not be served; ``reason`` says why in one word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Snapshot(Struct, tag="edge_snapshot.v1", kw_only=True, frozen=True):
    """One edge's answer table as it stood at ``written_at``: enough to answer without NATS."""

    written_at: float  # unix time
    stream_sequence: int = 0  # the highest ANSWERS stream sequence the answers reflect
    topology: bytes | None = None  # the config bucket's ``topology`` value (None: no topology)
    # Every installed AnswerSet and every tombstone with a revision, as the feed applied them.
    answers: list[AnswerSet] = []


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Snapshot)


def body_parts(meta: Snapshot, answers: Iterable[bytes], chunk: int = CHUNK) -> Iterator[bytes]:
    """The body of ``meta`` with ``answers`` (encoded AnswerSets) as its list, in pieces of ``chunk``."""
    if meta.answers:
        raise ValueError("meta must not carry answers: they are passed encoded")
    head = _encoder.encode(meta)
    if not head.endswith(b"[]}"):  # answers is the last field: the list closes the object
        raise AssertionError(f"unexpected snapshot head {head[-20:]!r}")
    yield head[:-2]
    pending = iter(answers)
    separator = b""
    while piece := list(itertools.islice(pending, chunk)):
        yield separator + b",".join(piece)
        separator = b","
    yield b"]}"


def header(parts: Sequence[bytes]) -> bytes:
    """The header line of a body made of ``parts`` (hashing releases the GIL: call it off the loop)."""
    digest = hashlib.sha256()
    size = 0
    for part in parts:
        digest.update(part)
        size += len(part)
    return b"%s sha256=%s bytes=%d\n" % (FORMAT, digest.hexdigest().encode(), size)


def encode(meta: Snapshot, answers: Iterable[bytes]) -> bytes:
    """A whole snapshot file in one piece."""
    parts = list(body_parts(meta, answers))
    return header(parts) + b"".join(parts)


def decode(data: bytes) -> Snapshot:
    """The snapshot in a file's ``data``; raise :class:`SnapshotError` unless it is whole and ours."""
    line, newline, body = data.partition(b"\n")
    if not newline:
        raise SnapshotError("truncated", "no header line")
    fields = line.split(b" ")
    if fields[0] != FORMAT:
        raise SnapshotError("unknown_format", repr(fields[0][:40]))
    digest, size = _header_fields(fields[1:])
    if len(body) != size:
        raise SnapshotError("truncated" if len(body) < size else "length_mismatch", f"{len(body)} of {size} bytes")
    if hashlib.sha256(body).hexdigest() != digest:
        raise SnapshotError("checksum_mismatch")
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:  # a checksum of our own but not our schema (or not JSON)
        raise SnapshotError("undecodable", str(exc)) from None


def _header_fields(fields: list[bytes]) -> tuple[str, int]:
    """(sha256 hex digest, body length) of the header's ``key=value`` fields."""
    values: dict[bytes, bytes] = {}
    for field in fields:
        key, _, value = field.partition(b"=")
        values[key] = value
    digest, size = values.get(b"sha256", b""), values.get(b"bytes", b"")
    if len(fields) != 2 or len(digest) != 64 or not size.isdigit():
        raise SnapshotError("bad_header", repr(b" ".join(fields)[:120]))
    try:
        return digest.decode("ascii"), int(size)
    except UnicodeDecodeError:
        raise SnapshotError("bad_header", "non-ASCII digest") from None

"""Whole replies to fast-path queries whose answer never changes, by the query without its ID (no I/O).

The batch UDP loop (:class:`services.edge.server.BatchUdp`) looks each datagram up here before it
asks the responder: a hit is the reply but for its first two bytes, the query's ID, which the loop
copies from the query. Only what the responder's fast path answers from an answer that never
changes goes in (see :attr:`AnswerTable.fixed`): not rotating or weighted records, not domains with
lines or per-region answers, whose reply depends on more than the bytes of the query. The reply of
the fast path is a function of the query's bytes after its ID (flags, counts, the question as
written, the OPT record), so one entry serves every query with the same bytes.

Any change to the table empties the cache (checked once per batch, and when an entry is added);
so does adding to a full one. Hits are counted in the entries and folded into the query counts
when the metrics are read (:meth:`QueryCounts.settle`) or the cache is emptied.
"""

from __future__ import annotations

from services.edge.stats import QueryCounts
from services.edge.table import AnswerTable

MAX_ENTRIES = 4096  # distinct query shapes kept (about 3 MB at the largest UDP replies)


class Reply:
    """One cached reply: ``tail`` is the reply after its ID, ``size`` the whole reply's length."""

    __slots__ = ("hits", "key", "size", "tail")

    def __init__(self, tail: bytes, key: bytes) -> None:
        self.tail, self.size, self.key = tail, len(tail) + 2, key
        self.hits = 0  # answered from here since the last fold


class ReplyCache:
    """Replies by query bytes after the ID, for the answers of ``table`` as it is now; hits counted in ``counts``."""

    __slots__ = ("_counts", "_entries", "_seen", "_table", "max_entries")

    def __init__(self, table: AnswerTable, counts: QueryCounts, *, max_entries: int = MAX_ENTRIES) -> None:
        self._table, self._counts = table, counts
        self._entries: dict[bytes, Reply] = {}
        self._seen = table.changes
        self.max_entries = max_entries
        counts.folds.append(self.fold)

    def __len__(self) -> int:
        return len(self._entries)

    def current(self) -> dict[bytes, Reply]:
        """The entries, right for the table as it is now (emptied first if it changed)."""
        if self._table.changes != self._seen:
            self.clear()
        return self._entries

    def put(self, query: bytes, reply: bytes, key: bytes) -> None:
        """Keep ``reply`` (to ``query``, whose lower-cased question is ``key``), already counted once."""
        entries = self.current()
        if len(entries) >= self.max_entries:
            self.clear()
        entries[query[2:]] = Reply(reply[2:], key)

    def clear(self) -> None:
        """Fold the hits into the counts and forget every entry."""
        self.fold()
        self._entries.clear()
        self._seen = self._table.changes

    def fold(self) -> None:
        """Move the hits counted in the entries into the query counts."""
        fast = self._counts.fast
        for entry in self._entries.values():
            if entry.hits:
                fast[entry.key] = fast.get(entry.key, 0) + entry.hits
                entry.hits = 0

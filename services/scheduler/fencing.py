"""Fencing a deposed leader: terms on every publication, and what a leader does about older ones (pure).

A scheduler's *term* is the revision of the lease key written by its take-over
(see :mod:`services.scheduler.lease`): every later take-over writes a higher
one.  Each AnswerSet and PoolState carries the term of its publisher.  The
lease stops a leader from handing anything to NATS once it may have been
replaced, but what it handed over just before (a TCP segment in flight when
the link was cut, a publication nats.py buffered) may still land later.  So:

- an edge ignores, for a name it serves, an answer of a lower term than the
  highest it has seen (``services.edge.table``);
- a leader that sees a lower-term answer or pool view land on the bus
  publishes its own over it, with its term and a revision above the stale one,
  so the streams converge for edges that start later;
- a leader that sees a higher term than its own has been replaced: it stops.

An edge learns a new leader's term from its first publication; until then a
deposed leader's late answer is taken like any newer one, and is replaced as
soon as the leader has published its own over it.
"""

from __future__ import annotations

from collections.abc import Iterable


def leader_term(lease_term: int, seen: Iterable[int]) -> int:
    """The term of a new leader: its lease revision, above every term already seen on the bus.

    The lease revision alone rises with every take-over; the terms seen matter only when
    the lease bucket was recreated (its revisions start again at 1) while the streams kept
    the old leaders' publications.
    """
    highest = max(seen, default=0)
    return lease_term if lease_term > highest else highest + 1


def is_stale(term: int, own: int) -> bool:
    """Whether a publication of ``term`` comes from a leader older than one of term ``own``.

    Term 0 says nothing (a publisher that does not fence): never stale.
    """
    return 0 < term < own


def is_deposed(term: int, own: int) -> bool:
    """Whether a publication of ``term`` proves that a newer leader than ``own`` has taken over."""
    return own > 0 and term > own


def repair_revision(own: int, stale: int, *, at: float) -> int:
    """The revision of a republication over a stale answer: above both ours and the stale one.

    Edges never take a lower revision, and the stale answer may carry a higher one than
    ours (decided after ours, or on a clock ahead of ours).
    """
    return max(int(at * 1000), own + 1, stale + 1)

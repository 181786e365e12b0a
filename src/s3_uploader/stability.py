"""When is a file done being written? A pure decision, and the bounded set of files being watched.

A file is *ready* when its signature (size, mtime, inode) has stayed the same for ``stable_seconds``
over at least ``stable_checks`` consecutive checks, and no process holds it open for writing. Time
is always passed in (``now``), so tests drive it with a fake clock.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Dict, List, NamedTuple, Optional, Tuple

Signature = Tuple[int, int, int]  # size, mtime_ns, inode

MIN_CHECK_INTERVAL = 0.2  # seconds; checks closer than this prove nothing more
WRITER_RECHECK = 2.0  # seconds between checks of a file some process still has open for writing
UNSETTLED_MIN = 60.0  # seconds; see unsettled_after


def unsettled_after(stable_seconds: float) -> float:
    """How long a tracked file may stay unstable before it counts as *unsettled* (a log appended to
    for ever, a file held open for hours): four stable periods, and never under a minute, so a file
    that is merely slow to finish keeps its place."""
    return max(UNSETTLED_MIN, 4 * stable_seconds)


# Observation and Verdict are NamedTuples, as FileStat: one of each is made per check of every file.
class Observation(NamedTuple):
    """What was seen of a file: the signature, since when unchanged, and in how many checks."""

    signature: Signature
    since: float
    checks: int


class Verdict(NamedTuple):
    """The outcome of one check: ready, or when to look again."""

    ready: bool
    observation: Observation
    next_check_at: Optional[float]  # None when ready
    changed: bool  # the signature differs from the previous observation (or there was none)
    writer_open: bool = False


def check_interval(stable_seconds: float, stable_checks: int) -> float:
    """The spacing of checks so that ``stable_checks`` of them span ``stable_seconds``."""
    if stable_checks <= 1:
        return max(stable_seconds, MIN_CHECK_INTERVAL)
    return max(stable_seconds / (stable_checks - 1), MIN_CHECK_INTERVAL)


def assess(prev: Optional[Observation], signature: Signature, now: float, stable_seconds: float,
           stable_checks: int, writer_open: bool = False) -> Verdict:
    """Given the previous observation and a fresh signature at ``now``, decide readiness.

    A changed signature (or an open writer) starts the count again from this check.
    """
    changed = prev is None or prev.signature != signature
    if prev is None or changed or writer_open:
        obs = Observation(signature, now, 1)
    else:
        obs = Observation(signature, prev.since, prev.checks + 1)
    ready = (not writer_open and obs.checks >= stable_checks and now - obs.since >= stable_seconds)
    if ready:
        return Verdict(True, obs, None, changed, writer_open)
    step = check_interval(stable_seconds, stable_checks)
    if writer_open:
        # a writer may hold a file for hours; its close event (where events work) pokes us sooner
        return Verdict(False, obs, now + max(step, WRITER_RECHECK), changed, writer_open)
    # never check before the stable period can possibly have elapsed
    if obs.checks + 1 >= stable_checks:
        next_at = max(obs.since + stable_seconds, now + MIN_CHECK_INTERVAL)
    else:
        next_at = now + step
    return Verdict(False, obs, next_at, changed, writer_open)


class Tracker:
    """The files currently being watched for stability: at most ``capacity`` of them.

    Each has an observation, a due time and the time it was first due (``since``: how long it has
    been tracked); ``pop_due(now)`` hands out those whose check is due. Not thread-safe: one
    scheduler thread owns it (``len`` and ``in`` may be read from others).
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._since: Dict[str, float] = {}
        self._obs: Dict[str, Optional[Observation]] = {}
        self._due: Dict[str, float] = {}
        self._heap: List[Tuple[float, int, str]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, rel: str) -> bool:
        return rel in self._due

    @property
    def full(self) -> bool:
        return len(self._due) >= self.capacity

    def add(self, rel: str, due_at: float) -> bool:
        """Track ``rel`` with a check due at ``due_at``; an already tracked file is made due sooner
        if ``due_at`` is earlier. Returns False when full and ``rel`` is not tracked."""
        if rel in self._due:
            if due_at < self._due[rel]:
                self._schedule(rel, due_at)
            return True
        if self.full:
            return False
        self._since[rel] = due_at
        self._obs[rel] = None
        self._schedule(rel, due_at)
        return True

    def observation(self, rel: str) -> Optional[Observation]:
        return self._obs.get(rel)

    def reschedule(self, rel: str, obs: Observation, due_at: float) -> None:
        self._obs[rel] = obs
        self._schedule(rel, due_at)

    def remove(self, rel: str) -> None:
        self._since.pop(rel, None)
        self._obs.pop(rel, None)
        self._due.pop(rel, None)

    def since(self, rel: str) -> float:
        """When ``rel`` was first due (it has been tracked since); KeyError when not tracked."""
        return self._since[rel]

    def unsettled(self, now: float, older_than: float) -> int:
        """How many files have been tracked (and so not found ready) for longer than ``older_than``."""
        return sum(1 for t in self._since.values() if now - t > older_than)

    def next_due(self) -> Optional[float]:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float, limit: int = 1 << 30) -> List[str]:
        """The tracked files whose check is due at ``now`` (earliest first). They stay tracked
        until ``remove`` or ``reschedule``; popping only clears their due time."""
        out: List[str] = []
        while self._heap and len(out) < limit:
            due, _, rel = self._heap[0]
            if self._due.get(rel) != due:
                heapq.heappop(self._heap)
                continue
            if due > now:
                break
            heapq.heappop(self._heap)
            self._due[rel] = float("inf")  # in hand; the caller reschedules or removes it
            out.append(rel)
        return out

    def _schedule(self, rel: str, due_at: float) -> None:
        self._due[rel] = due_at
        heapq.heappush(self._heap, (due_at, next(self._seq), rel))
        if len(self._heap) > 4 * max(len(self._due), 64):  # compact lazily-deleted entries
            self._heap = [(d, s, r) for d, s, r in self._heap if self._due.get(r) == d]
            heapq.heapify(self._heap)

    def _drop_stale(self) -> None:
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)

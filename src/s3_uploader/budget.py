"""Data budgets for metered links: ``[upload] max_bytes_per_day`` and ``[upload] max_bytes_per_month``.

Periods follow the local calendar: a day from local midnight, a month from the 1st at local
midnight (:func:`periods_at`, by ``localtime``/``mktime``, so a day of 23 or 25 hours at a DST
change is still one day). Each limit is off when 0.

What counts: every request body byte the daemon sends while a budget is set, charged as it is sent
(:meth:`Budget.charge`, called where the bandwidth limiter paces it: a single PUT's body, each
1 MiB of a streamed PUT, each part of a multipart upload), so a part sent again, or a file sent
again after a failure, is paid for again, as a metered link bills it. Headers and requests without a
body (HEAD, listings, completing a multipart upload) are not counted, nor the re-sends botocore
makes by itself within one request (its own retries: counted once). While a budget is set every
upload goes through the upload workers (as with a bandwidth limit): the asyncio sender does not
pass through the limiter, and no byte may go uncounted.

The gate (:meth:`Budget.gate`, where jobs are handed to the workers): a file starts only if it fits
in what is left of both budgets, counting what the uploads already started may still send (each is
reserved at its size, or what is left of an open multipart upload, until its outcome is recorded).
Files that fit go first, in order; one that does not fit stays in the scheduler's hands (its row
pending: no attempt counted, nothing parked) until the period whose limit holds it back ends, or
until uploads in flight finish when only they hold it back. While files wait for a period to end,
uploads are *paused*: one WARNING line says how much is used and when they resume, one INFO line
says when they do. A file larger than a whole period's limit can never fit: it is parked with one
ERROR line naming the file, its size and the key to raise, and looked at again within the hour
(:data:`PARK_RECHECK`; at once with ``s3-uploader retry``, or when a reload raises or removes a
limit), so a raised limit lets it go. Uploads
in flight when the budget runs out finish: the overrun is bounded by what they send beyond their
reservation (a part sent again).

The count survives restarts: it lives in the state database's ``meta`` table (``budget:day:<date>``
and ``budget:month:<year-month>``, rows of past periods pruned), with ``budget:state`` (limits,
paused, resume time) for ``status``. :class:`Budget` is the decision core, its I/O behind a
:class:`Ledger` (:class:`StoreLedger` in the daemon, a dict in tests), its clock injected.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

if TYPE_CHECKING:
    from .job import Job
    from .order import ReadyHeap
    from .store import Store

log = logging.getLogger(__name__)

META_DAY = "budget:day:"  # + YYYY-MM-DD: bytes sent that local day
META_MONTH = "budget:month:"  # + YYYY-MM: bytes sent that local month
META_STATE = "budget:state"  # JSON: limits, paused, resume time (what ``status`` shows)
KEYS = {"day": "max_bytes_per_day", "month": "max_bytes_per_month"}
# A file too large for a whole period is parked and looked at again this long after at most. Not
# at the next period: the scheduler takes a row due further ahead than a few hours for one scheduled
# by a clock since set back, and would look at it again at once (scheduler._sweep_retries' horizon).
PARK_RECHECK = 3600.0

LocalTime = Callable[[float], time.struct_time]
MkTime = Callable[[Tuple[int, int, int, int, int, int, int, int, int]], float]


def human_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it at least 1 (``1.5 GiB``, ``512 B``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # not reached


def local_text(wall: float, localtime: LocalTime = time.localtime) -> str:
    """``wall`` as local ``YYYY-MM-DD HH:MM`` (what the log and ``status`` show)."""
    return time.strftime("%Y-%m-%d %H:%M", localtime(wall))


@dataclass(frozen=True)
class Periods:
    """The local day and month that hold ``wall``: their names and when the next ones start."""

    day: str  # YYYY-MM-DD
    month: str  # YYYY-MM
    next_day: float  # epoch seconds of the next local midnight
    next_month: float  # epoch seconds of the next 1st, local midnight


def _start(y: int, m: int, d: int, after: float, mktime: MkTime) -> float:
    # tm_isdst = -1: mktime works out whether DST is in force then; mktime also carries day 31 of a
    # 30-day month over to the 1st. Where DST begins at midnight (a local midnight that does not
    # exist), mktime gives 01:00, the first instant of that day.
    t = mktime((y, m, d, 0, 0, 0, 0, 0, -1))
    if t <= after:  # a libc that gives the instant before a missing midnight: the day starts an hour on
        t = mktime((y, m, d, 1, 0, 0, 0, 0, -1))
    return t


def periods_at(wall: float, localtime: LocalTime = time.localtime, mktime: MkTime = time.mktime) -> Periods:
    """The local day and month holding ``wall`` (epoch seconds), from ``localtime``/``mktime``
    (the process's time zone by default; tests pass others)."""
    t = localtime(wall)
    y, m = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return Periods(f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}", f"{t.tm_year:04d}-{t.tm_mon:02d}",
                   _start(t.tm_year, t.tm_mon, t.tm_mday + 1, wall, mktime), _start(y, m, 1, wall, mktime))


@dataclass(frozen=True)
class Verdict:
    """May a file start now? ``go``; else ``until``: when the period holding it back ends (None:
    only uploads in flight hold it back), or ``never``: the period (``day``/``month``) whose whole
    limit is smaller than the file."""

    go: bool
    until: Optional[float] = None
    never: Optional[str] = None


GO = Verdict(True)


def decide(size: int, limits: Tuple[int, int], used: Tuple[int, int], held: int, periods: Periods) -> Verdict:
    """Whether a file of ``size`` bytes may start: ``limits`` and ``used`` are (day, month) bytes
    (a limit of 0: none), ``held`` the bytes reserved by uploads started and not finished.

    Given a limit smaller than ``size``: never. Given ``used + size`` over a limit: wait until the
    latest end of the periods over their limit. Given only ``held`` in the way: wait (None), until
    uploads in flight finish. Otherwise go."""
    ends = (periods.next_day, periods.next_month)
    blocked: List[float] = []
    in_flight = False
    for name, limit, spent, end in zip(("day", "month"), limits, used, ends):
        if not limit:
            continue
        if size > limit:
            return Verdict(False, never=name)
        if spent + size > limit:
            blocked.append(end)
        elif spent + held + size > limit:
            in_flight = True
    if blocked:
        return Verdict(False, until=max(blocked))
    return Verdict(False) if in_flight else GO


class Ledger(Protocol):
    """Where the counts live: named counters that survive restarts, and the state row."""

    def used(self, name: str) -> int: ...

    def add(self, names: Sequence[str], n: int) -> None: ...

    def prune(self, keep: Sequence[str]) -> None: ...

    def save_state(self, state: Dict[str, Any]) -> None: ...

    def unpark(self, now: float) -> int:
        """Make the files parked as too large for the budget due at ``now``; returns how many."""


class StoreLedger:
    """A :class:`Ledger` in the state database's ``meta`` table (``store()``: the daemon's store,
    read at use because it is opened at start). Writes go into the store's group commit."""

    def __init__(self, store: Callable[[], "Store"]):
        self._store = store

    def used(self, name: str) -> int:
        return used_in(self._store(), name)

    def add(self, names: Sequence[str], n: int) -> None:
        store = self._store()
        for name in names:
            store.add_to_meta_counter(name, n)

    def prune(self, keep: Sequence[str]) -> None:
        marks = ",".join("?" * len(keep))
        self._store().execute(f"DELETE FROM meta WHERE (name LIKE 'budget:day:%' OR name LIKE 'budget:month:%') "
                              f"AND name NOT IN ({marks})", tuple(keep))

    def save_state(self, state: Dict[str, Any]) -> None:
        self._store().set_meta(META_STATE, json.dumps(state, sort_keys=True))

    def unpark(self, now: float) -> int:
        return self._store().retry_parked(now, kind="budget")


def used_in(store: "Store", name: str) -> int:
    raw = store.meta(name)
    try:
        return int(raw) if raw else 0
    except ValueError:
        return 0


@dataclass(frozen=True)
class Reading:
    """The budget at one moment, as status, metrics and health show it."""

    limits: Tuple[int, int]  # (day, month) bytes; 0 = none
    used: Tuple[int, int]
    periods: Periods
    paused: bool  # files wait for a period to end
    resume_at: Optional[float]  # when they may go (None: not paused)
    waiting: int  # files held back by the budget at the last hand-over, until a period ends
    reserved: int = 0  # bytes reserved by uploads handed over and not finished

    @property
    def active(self) -> bool:
        return any(self.limits)


class Budget:
    """The daily and monthly limits, the bytes used in the current periods, and the gate.

    Thread-safe: :meth:`charge` is called by upload and part threads, :meth:`gate` by the
    scheduler, :meth:`reading` by metrics and status. ``wall`` is the epoch clock that places now
    in a day and a month (``localtime``/``mktime`` the calendar). ``ledger`` holds the counts; they
    are read from it when a period is first seen (so a new Budget over the same store goes on where
    the last one stopped) and added to it at every charge.
    """

    def __init__(self, ledger: Ledger, day: int = 0, month: int = 0, *, wall: Callable[[], float] = time.time,
                 localtime: LocalTime = time.localtime, mktime: MkTime = time.mktime):
        self.ledger = ledger
        self.wall = wall
        self.localtime = localtime
        self.mktime = mktime
        self._lock = threading.Lock()
        self._limits = (int(day or 0), int(month or 0))
        self._periods: Optional[Periods] = None
        self._used = (0, 0)
        self._held: Dict[str, int] = {}  # rel -> bytes reserved by an upload handed over
        self._held_total = 0
        # What the last hand-over left in ``ready`` (each job kept -> the end of the period it waits
        # for, None when it waits for uploads in flight) and under which state (periods, limits, used,
        # held) with ``ready.added`` at its end: while that state holds, those jobs still do not fit,
        # so a paused daemon with thousands of files waiting decides only about the new ones (and
        # about none when nothing was added).
        self._settled_state: Optional[Tuple[Any, ...]] = None
        self._settled: Dict[str, Optional[float]] = {}
        self._settled_added = -1
        self._paused_until: Optional[float] = None
        self._waiting = 0

    # -- configuration ----------------------------------------------------------------------------
    def configure(self, day: int, month: int) -> None:
        """New limits (a reload): the next hand-over decides by them."""
        with self._lock:
            old, self._limits = self._limits, (int(day or 0), int(month or 0))
            if old == self._limits:
                return
            if not any(self._limits):
                self._paused_until, self._waiting = None, 0
            self._save_state()
        log.info("Upload budget now %s", self._describe_limits())
        # a limit raised or removed: files parked as larger than a whole period may fit now, so they
        # are looked at again at once rather than within the hour
        if any(o and (not n or n > o) for o, n in zip(old, self._limits)):
            woken = self.ledger.unpark(self.wall())
            if woken:
                log.info("%d file(s) parked as too large for the upload budget are looked at again", woken)

    @property
    def active(self) -> bool:
        """Whether any limit is set (reads no lock: a reload swaps the tuple whole)."""
        return any(self._limits)

    def _describe_limits(self) -> str:
        day, month = self._limits
        parts = [f"{human_bytes(day)} per day" if day else "", f"{human_bytes(month)} per month" if month else ""]
        return ", ".join(p for p in parts if p) or "off"

    # -- the count --------------------------------------------------------------------------------
    def _roll(self, now: float) -> Periods:
        """The periods holding ``now`` (worked out at every call: a clock set back moves them back
        too); on entering new ones, their counts from the ledger, and older rows pruned (lock held)."""
        p = self._periods
        cur = periods_at(now, self.localtime, self.mktime)
        if p is None or cur.day != p.day or cur.month != p.month:
            names = (META_DAY + cur.day, META_MONTH + cur.month)
            self._used = (self.ledger.used(names[0]), self.ledger.used(names[1]))
            self.ledger.prune(names)
        self._periods = cur
        return cur

    def charge(self, n: int) -> None:
        """``n`` body bytes are being sent now: count them in the day and the month (nothing while
        no limit is set)."""
        if n <= 0 or not self.active:
            return
        with self._lock:
            p = self._roll(self.wall())
            self._used = (self._used[0] + n, self._used[1] + n)
            self.ledger.add((META_DAY + p.day, META_MONTH + p.month), n)

    def release(self, rel: str) -> None:
        """The upload of ``rel`` handed over by :meth:`gate` has ended (whatever its outcome)."""
        with self._lock:
            self._held_total -= self._held.pop(rel, 0)

    # -- the gate ---------------------------------------------------------------------------------
    def gate(self, ready: "ReadyHeap[Job]", hand: Callable[["Job"], bool],
             park: Callable[["Job", str, float], None],
             sent_before: Callable[["Job"], int] = lambda job: 0) -> None:
        """Hand over, in order, the jobs of ``ready`` that fit in what is left; the rest stay in
        ``ready``, in order. ``hand(job)`` returns False when the workers' queue is full (the job
        and those after it stay); ``park(job, message, retry_at)`` parks a file larger than a whole
        period's limit, to be looked at again at ``retry_at``; ``sent_before(job)`` is what an open
        multipart upload has already sent (only the rest is reserved)."""
        with self._lock:
            now = self.wall()
            p = self._roll(now)
            limits, used = self._limits, self._used
            # more held back only lets less fit: the jobs the last pass kept still do not, unless
            # the periods, the limits, what was used or what is held changed since
            same = self._settled_state == (p.day, p.month, limits, used, self._held_total)
            if same and ready.added == self._settled_added:
                return  # nothing new, nothing changed: the last pass's verdicts stand
            settled = self._settled if same else {}
        kept: List["Job"] = []
        waits: Dict[str, Optional[float]] = {}
        complete = True
        while ready:
            job = ready.popleft()
            if job.rel in settled:
                kept.append(job)
                waits[job.rel] = settled[job.rel]
                continue
            size = max(0, job.stat.size - (sent_before(job) if job.upload_id else 0))
            with self._lock:
                v = decide(size, limits, used, self._held_total, p)
                if v.go:
                    self._held_total += size - self._held.get(job.rel, 0)
                    self._held[job.rel] = size
            if v.go:
                if hand(job):
                    continue
                self.release(job.rel)
                kept.append(job)
                complete = False
                break
            if v.never is not None:
                key = KEYS[v.never]
                limit = limits[0] if v.never == "day" else limits[1]
                msg = (f"larger ({human_bytes(job.stat.size)}) than [upload] {key} "
                       f"({human_bytes(limit)}): it can never fit in one {v.never}'s budget; raise {key} "
                       f"(parked; looked at again at once when a reload raises it, else within the hour)")
                park(job, msg, min(p.next_day if v.never == "day" else p.next_month, now + PARK_RECHECK))
                continue
            kept.append(job)
            waits[job.rel] = v.until
        while ready:  # stopped at a full queue: the rest, taken out to go back after the kept, in order
            kept.append(ready.popleft())
        untils = [u for u in waits.values() if u is not None]
        waiting, paused_until = len(untils), (min(untils) if untils else None)
        ready.put_back(kept)
        with self._lock:
            self._settled_state = (p.day, p.month, limits, used, self._held_total) if complete else None
            self._settled = waits if complete else {}
            self._settled_added = ready.added
            was = self._paused_until
        if complete:
            self._note_pause(paused_until, waiting, now, p, limits, used)
        elif was is not None and was <= now:
            # stopped at a full queue before the jobs held back: the pause is over only when its time is
            self._note_pause(None, 0, now, p, limits, used)

    def _note_pause(self, until: Optional[float], waiting: int, now: float, p: Periods, limits: Tuple[int, int],
                    used: Tuple[int, int]) -> None:
        """Say once when uploads pause (how much is used, when they resume) and once when they resume."""
        with self._lock:
            was, self._paused_until, self._waiting = self._paused_until, until, waiting
            if (was is None) == (until is None) and (was is None or was == until):
                return
            self._save_state()
        if until is not None and was is None:
            log.warning("Upload budget used: %s; %d file(s) that do not fit in what is left wait, uploads "
                        "resume at %s (uploads in flight finish)", self._usage(limits, used),
                        waiting, local_text(until, self.localtime))
        elif until is None:
            log.info("Upload budget: uploads resume (%s)", self._usage(limits, used))

    def _usage(self, limits: Tuple[int, int], used: Tuple[int, int]) -> str:
        parts = []
        for (name, where), limit, spent in zip((("day", "today"), ("month", "this month")), limits, used):
            if limit:
                parts.append(f"{human_bytes(spent)} of {human_bytes(limit)} {where} ([upload] {KEYS[name]})")
        return ", ".join(parts)

    def _save_state(self) -> None:
        """The row ``status`` reads (lock held)."""
        self.ledger.save_state({"max_bytes_per_day": self._limits[0], "max_bytes_per_month": self._limits[1],
                                "paused": self._paused_until is not None, "resume_at": self._paused_until,
                                "waiting": self._waiting, "at": self.wall()})

    # -- what status, metrics and health read -------------------------------------------------------
    def reading(self) -> Reading:
        """The budget now: limits, used, whether paused and until when."""
        with self._lock:
            p = self._roll(self.wall())
            return Reading(self._limits, self._used, p, self._paused_until is not None, self._paused_until,
                           self._waiting, self._held_total)

    def ends_pass(self, nothing_else: bool) -> bool:
        """Whether a single pass ends here: the budget holds files back until a period ends, nothing
        handed over is still running, and ``nothing_else`` (no file is left to look at). Says so."""
        with self._lock:
            if self._paused_until is None or self._held or not nothing_else:
                return False
            until, waiting = self._paused_until, self._waiting
        log.warning("Upload budget used: %d file(s) wait until %s; ending this pass (run it again then)",
                    waiting, local_text(until, self.localtime))
        return True


def budget_note(reading: Optional[Reading]) -> Optional[str]:
    """One line for ``/healthz`` while the budget pauses uploads (not unhealthy: they resume by
    themselves); None otherwise."""
    if reading is None or not reading.paused or reading.resume_at is None:
        return None
    return f"uploads paused by the upload budget until {local_text(reading.resume_at)} ({reading.waiting} file(s) wait)"


def stored_status(store: "Store", now: float) -> Optional[Dict[str, Any]]:
    """The ``budget`` object of ``status``: None when no budget was ever set, else the limits the
    daemon last ran with, what was used in the periods holding ``now``, and whether uploads were
    paused and until when (as the daemon last said; a resume time already past is not a pause)."""
    raw = store.meta(META_STATE)
    if not raw:
        return None
    try:
        state = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(state, dict):
        return None
    day, month = int(state.get("max_bytes_per_day") or 0), int(state.get("max_bytes_per_month") or 0)
    if not day and not month:
        return None
    p = periods_at(now)
    raw_resume = state.get("resume_at")
    resume = float(raw_resume) if isinstance(raw_resume, (int, float)) else None
    paused = bool(state.get("paused")) and resume is not None and resume > now
    out: Dict[str, Any] = {"paused": paused, "resume_at": resume if paused else None,
                           "resume_at_local": local_text(resume) if resume is not None and paused else None,
                           "waiting": int(state.get("waiting") or 0) if paused else 0}
    for name, limit, period, next_start, prefix in (("day", day, p.day, p.next_day, META_DAY),
                                                    ("month", month, p.month, p.next_month, META_MONTH)):
        used = used_in(store, prefix + period)
        out[name] = None if not limit else {"period": period, "used": used, "limit": limit,
                                            "left": max(0, limit - used), "next_period_at": next_start}
    return out

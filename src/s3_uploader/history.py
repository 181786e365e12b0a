"""What the daemon did, minute by minute, kept in the state database for the status page's charts.

One row per minute the daemon ran (table ``history_minutes``, schema 4): files and bytes uploaded in
it, failed upload attempts in it, and the backlog (files not yet in S3) at its end. Rows older than
:data:`KEEP_SECONDS` (7 days) are pruned; being in the database, the history survives a restart.

Cheap by construction: nothing is written per file. The daemon's own counters (``Stats``: uploaded
files and bytes, failures by reason) are the accumulator; :meth:`History.tick`, called by the main
thread twice a second, notices that the wall-clock minute changed and writes the difference since
the last write as the ended minute's row, in one statement (an upsert, so a restart within the same
minute adds to the row the shutdown wrote), inside the store's group commit. The prune is one
``DELETE`` by primary key range, at most once an hour. :meth:`History.flush` writes the minute so
far at shutdown.

:meth:`History.chart` reads the rows back in intervals for one of :data:`RANGES`, adding the
minute not yet written, so a chart shows an upload at once.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from .store import WAITING_STATES, StoreError

log = logging.getLogger(__name__)

MINUTE = 60
KEEP_SECONDS = 7 * 86400
PRUNE_INTERVAL = 3600.0
# range name -> (seconds covered, seconds per interval): 144 intervals of 10 min, 168 of an hour
RANGES: Dict[str, Tuple[int, int]] = {"24h": (86400, 600), "7d": (7 * 86400, 3600)}

_UPSERT = ("INSERT INTO history_minutes(minute, files, bytes, failures, backlog) VALUES(?, ?, ?, ?, ?) "
           "ON CONFLICT(minute) DO UPDATE SET files = files + excluded.files, bytes = bytes + excluded.bytes, "
           "failures = failures + excluded.failures, backlog = excluded.backlog")
# per interval: the sums, and (SQLite's bare column beside max()) the backlog of its last minute
_SELECT = ("SELECT minute / ? * ? AS t, sum(files), sum(bytes), sum(failures), backlog, max(minute) "
           "FROM history_minutes WHERE minute >= ? AND minute < ? GROUP BY t")

Totals = Tuple[int, int, int]  # files, bytes, failures


def minute_of(t: float) -> int:
    """The start (Unix seconds) of the minute holding wall time ``t``."""
    return int(t) // MINUTE * MINUTE


class History:
    """The per-minute history of one daemon: ``stats`` is its ``Stats`` (read under ``stats.lock``),
    ``store`` returns its Store, ``wall`` is the wall clock. Thread-safe: the main thread ticks and
    flushes, the status page's threads read."""

    def __init__(self, store: Callable[[], Any], stats: Any, wall: Callable[[], float],
                 keep: float = KEEP_SECONDS):
        self.store = store
        self.stats = stats
        self.wall = wall
        self.keep = keep
        self._lock = threading.Lock()
        self._minute: Optional[int] = None  # the minute being accumulated
        self._base: Totals = (0, 0, 0)  # the counters when it began
        self._pruned_at: Optional[float] = None
        self._failing = False  # a write failed: said once, not every minute

    def _totals(self) -> Totals:
        st = self.stats
        with st.lock:
            return st.uploaded_files, st.uploaded_bytes, sum(st.failures.values())

    def _backlog(self) -> int:
        counts = self.store().counts()
        return sum(counts.get(s, 0) for s in WAITING_STATES)

    def tick(self) -> bool:
        """Write the ended minute's row when the wall-clock minute has changed (the first call only
        starts counting). True when a row was written."""
        now = self.wall()
        with self._lock:
            if self._minute is None:
                self._minute, self._base = minute_of(now), self._totals()
                return False
            if minute_of(now) == self._minute:
                return False
            return self._write(now)

    def flush(self) -> None:
        """Write the minute so far (at shutdown); counting goes on from here."""
        with self._lock:
            if self._minute is not None:
                self._write(self.wall())

    def _write(self, now: float) -> bool:
        """One upsert for the minute being accumulated; then the current minute starts. A database
        error loses that minute's row (said once until a write succeeds again), never the daemon."""
        minute, base, totals = self._minute, self._base, self._totals()
        self._minute, self._base = minute_of(now), totals
        try:
            self.store().execute(_UPSERT, (minute, *(t - b for t, b in zip(totals, base)), self._backlog()))
            if self._pruned_at is None or now - self._pruned_at >= PRUNE_INTERVAL:
                self._pruned_at = now
                self.store().execute("DELETE FROM history_minutes WHERE minute < ?", (minute_of(now - self.keep),))
        except StoreError as exc:
            if not self._failing:
                log.warning("History: cannot write the minute's counters (%s); the status page's charts miss it",
                            exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def chart(self, range_name: str) -> Dict[str, Any]:
        """The chart data of ``range_name`` (a key of :data:`RANGES`; KeyError otherwise), ending with
        the interval that holds now: ``{"range", "step", "start", "end", "points", "totals"}`` where
        each point is ``{"t", "files", "bytes", "failures", "backlog"}`` (``t``: the interval's start,
        Unix seconds; ``backlog``: at its last recorded minute, None when the daemon did not run in it)
        and ``totals`` sums files, bytes and failures over the range."""
        span, step = RANGES[range_name]
        now = self.wall()
        end = (int(now) // step + 1) * step
        start = end - span
        points: Dict[int, Dict[str, Any]] = {
            t: {"t": t, "files": 0, "bytes": 0, "failures": 0, "backlog": None} for t in range(start, end, step)}
        last: Dict[int, int] = {}  # interval -> the minute its backlog is from
        for t, files, nbytes, failures, backlog, minute in self.store().query(_SELECT, (step, step, start, end)):
            points[t].update(files=files, bytes=nbytes, failures=failures, backlog=backlog)
            last[t] = minute
        live = self._live(now)
        if live is not None:  # the minute not yet written
            minute, (files, nbytes, failures), backlog = live
            p = points.get(minute // step * step)
            if p is not None:
                p.update(files=p["files"] + files, bytes=p["bytes"] + nbytes, failures=p["failures"] + failures)
                if minute >= last.get(p["t"], minute):
                    p["backlog"] = backlog
        out: List[Dict[str, Any]] = [points[t] for t in sorted(points)]
        totals = {k: sum(p[k] for p in out) for k in ("files", "bytes", "failures")}
        return {"range": range_name, "step": step, "start": start, "end": end, "points": out, "totals": totals}

    def _live(self, now: float) -> Optional[Tuple[int, Totals, int]]:
        with self._lock:
            if self._minute is None:
                return None
            minute, base = self._minute, self._base
        totals = self._totals()
        return minute, (totals[0] - base[0], totals[1] - base[1], totals[2] - base[2]), self._backlog()

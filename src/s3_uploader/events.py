"""The hooks' events in the state database: recorded with the move that causes them, then delivered.

An event is a file's move to ``uploaded``, ``parked``, ``deleted`` or ``archived``. The store calls
:meth:`EventLog.record` inside the transaction of that move (see :attr:`Store.events
<s3_uploader.store.Store>`), so the event and the state change are committed together: a crash
loses both or neither, and an event recorded is delivered, after a restart if need be (at least
once). One row is written per *target* that wants it at that moment: ``command`` (the hook for
that event is set) and ``webhook`` (``webhook_url`` is set); with neither configured, nothing is
written at all.

A row's life (every function below takes the connection, inside the store's lock)::

    pending --delivered--> (deleted; meta hooks.delivered + 1)
       |  ^
       |  +--failed, attempts < hook_max_attempts: next_attempt_at = now + backoff(attempts)
       +-----failed, attempts = hook_max_attempts--> given_up (kept until pruned; meta hooks.given_up + 1)

:func:`backoff` is 2 s doubling up to 10 minutes. Delivery itself (running the command, the POST)
is :mod:`s3_uploader.hooks`'s.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

EVENTS = ("uploaded", "parked", "deleted", "archived")
TARGETS = ("command", "webhook")
# the [hooks] key whose command an event runs: archived is a removal too (S3U_EVENT tells them apart)
COMMAND_KEY = {"uploaded": "on_uploaded", "parked": "on_parked", "deleted": "on_deleted", "archived": "on_deleted"}
BACKOFF_BASE = 2.0  # seconds before the second attempt
BACKOFF_MAX = 600.0  # the longest wait between two attempts
GIVEN_UP_KEPT = 7 * 86400.0  # a given-up row is kept this long (for a look at it), then pruned
META_DELIVERED, META_GIVEN_UP, META_LAST_ERROR = "hooks.delivered", "hooks.given_up", "hooks.last_error"

_COLUMNS = "id, target, event, path, abs_path, bucket, key, size, etag, error, at, attempts"


def backoff(attempts: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX) -> float:
    """Seconds to wait after ``attempts`` (>= 1) failed attempts: ``base`` doubling, at most ``cap``."""
    return min(cap, base * 2.0 ** min(max(attempts - 1, 0), 60))


def targets_for(hooks: Any, event: str) -> List[str]:
    """The targets that want ``event`` under ``hooks`` (a HooksSection): none when nothing is set."""
    out = []
    if getattr(hooks, COMMAND_KEY[event]):
        out.append("command")
    if hooks.webhook_url:
        out.append("webhook")
    return out


@dataclass(frozen=True)
class Event:
    """One delivery to make: an event for one target, as recorded."""

    id: int
    target: str
    event: str
    rel: str
    path: str  # absolute local path (archived: the copy in archive_directory)
    bucket: str
    key: Optional[str]
    size: Optional[int]
    etag: Optional[str]
    error: Optional[str]
    at: float  # wall clock of the move
    attempts: int  # failed attempts so far


class EventLog:
    """What the store calls in a move's transaction. ``config()`` is the live Config (read at every
    event, so a reload applies to the next one); ``clock`` the wall clock."""

    def __init__(self, config: Callable[[], Any], clock: Callable[[], float],
                 on_record: Optional[Callable[[], None]] = None):
        self.config = config
        self.clock = clock
        self.on_record = on_record  # e.g. wakes the delivery thread

    def wanted(self, event: str) -> bool:
        """Whether a move to ``event`` records anything now (cheap: no database access)."""
        return event in COMMAND_KEY and bool(targets_for(self.config().hooks, event))

    def record(self, conn: sqlite3.Connection, event: str, raws: Sequence[bytes]) -> int:
        """Insert the rows of ``event`` for the files ``raws`` (relative paths as stored), one per
        target that wants it, from their ``files`` rows as the move left them; returns how many."""
        cfg = self.config()
        targets = targets_for(cfg.hooks, event)
        if not targets or not raws:
            return 0
        base = cfg.cleanup.archive_directory if event == "archived" else str(cfg.watch_root)
        now = self.clock()
        sql = ("INSERT INTO hook_events(target, event, path, abs_path, bucket, key, size, etag, error, at, "
               "next_attempt_at) SELECT ?, ?, path, ?, ?, key, size, etag, "
               "CASE WHEN ? = 'parked' THEN last_error END, ?, ? FROM files WHERE path = ?")
        n = 0
        for raw in raws:
            # bytes, as the path itself: a name that is not UTF-8 cannot be SQLite TEXT
            abs_path = os.fsencode(os.path.join(base, *os.fsdecode(raw).split("/")))
            for target in targets:
                n += conn.execute(sql, (target, event, abs_path, cfg.s3.bucket, event, now, now, raw)).rowcount
        if n and self.on_record is not None:
            self.on_record()
        return n


def due(conn: sqlite3.Connection, now: float, limit: int, busy: Sequence[int] = ()) -> List[Event]:
    """Pending events due at ``now``, oldest due first, at most ``limit``, none of ``busy`` (ids being
    delivered). A row whose due time is far ahead of ``now`` (the wall clock went back) is due too."""
    if limit <= 0:
        return []
    skip = f" AND id NOT IN ({','.join('?' * len(busy))})" if busy else ""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM hook_events WHERE state = 'pending' AND "
                        f"(next_attempt_at <= ? OR next_attempt_at > ?){skip} ORDER BY next_attempt_at, id LIMIT ?",
                        (now, now + 2 * BACKOFF_MAX, *busy, limit)).fetchall()
    return [Event(r[0], r[1], r[2], os.fsdecode(r[3]), os.fsdecode(r[4]), *r[5:]) for r in rows]


def next_due(conn: sqlite3.Connection) -> Optional[float]:
    """When the soonest pending event is due (None: none pending)."""
    row = conn.execute("SELECT min(next_attempt_at) FROM hook_events WHERE state = 'pending'").fetchone()
    return row[0] if row else None


def delivered(conn: sqlite3.Connection, event_id: int) -> bool:
    """The event was delivered: its row goes, the delivered counter goes up. False when it was not
    pending (delivered or dropped already)."""
    if conn.execute("DELETE FROM hook_events WHERE id = ? AND state = 'pending'", (event_id,)).rowcount != 1:
        return False
    _add(conn, META_DELIVERED, 1)
    return True


def dropped(conn: sqlite3.Connection, event_id: int) -> None:
    """The event's target is no longer configured (a reload removed it): its row goes, uncounted."""
    conn.execute("DELETE FROM hook_events WHERE id = ? AND state = 'pending'", (event_id,))


def failed(conn: sqlite3.Connection, event_id: int, error: str, now: float, max_attempts: int) -> Optional[float]:
    """An attempt failed with ``error``: the next one is due after :func:`backoff`, returned as a
    wall time; or, at ``max_attempts`` attempts, the event is given up (returns None)."""
    row = conn.execute("SELECT attempts FROM hook_events WHERE id = ? AND state = 'pending'", (event_id,)).fetchone()
    if row is None:
        return None
    attempts = row[0] + 1
    conn.execute("INSERT INTO meta(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                 (META_LAST_ERROR, error))
    if attempts >= max_attempts:
        conn.execute("UPDATE hook_events SET state = 'given_up', attempts = ?, last_error = ?, next_attempt_at = ? "
                     "WHERE id = ?", (attempts, error, now, event_id))
        _add(conn, META_GIVEN_UP, 1)
        return None
    at = now + backoff(attempts)
    conn.execute("UPDATE hook_events SET attempts = ?, last_error = ?, next_attempt_at = ? WHERE id = ?",
                 (attempts, error, at, event_id))
    return at


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Drop the given-up rows given up before wall time ``before``; how many."""
    return conn.execute("DELETE FROM hook_events WHERE state = 'given_up' AND next_attempt_at < ?",
                        (before,)).rowcount


def summary(conn: sqlite3.Connection) -> Dict[str, Any]:
    """``status``'s "hooks" object: pending, delivered and given_up (counted since the database was
    made) and the last delivery error (None if none). Works on a database without the table."""
    has = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'hook_events'").fetchone()
    pending = conn.execute("SELECT count(*) FROM hook_events WHERE state = 'pending'").fetchone()[0] if has else 0
    meta = dict(conn.execute("SELECT name, value FROM meta WHERE name IN (?, ?, ?)",
                             (META_DELIVERED, META_GIVEN_UP, META_LAST_ERROR)).fetchall())
    return {"pending": pending, "delivered": int(meta.get(META_DELIVERED, 0)),
            "given_up": int(meta.get(META_GIVEN_UP, 0)), "last_error": meta.get(META_LAST_ERROR) or None}


def _add(conn: sqlite3.Connection, name: str, amount: int) -> None:
    conn.execute("INSERT INTO meta(name, value) VALUES(?, ?) "
                 "ON CONFLICT(name) DO UPDATE SET value = CAST(value AS INTEGER) + ?", (name, str(amount), amount))

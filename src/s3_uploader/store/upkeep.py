"""The store's upkeep: rows forgotten once nothing is left to do with them, meta values and
counters, and the move of every row to a new destination (:meth:`Upkeep.rebase_destination`).

Rows deleted or archived long ago are dropped by :meth:`Upkeep.forget_done`, a bounded batch at a
time over a partial index (``[daemon] forget_after``): a camera's months are millions of rows.
"""
from __future__ import annotations

import sqlite3
import threading
from typing import Callable, List, Optional, Tuple

from .database import Database, StoreError, explain
from .machine import WAITING_STATES
from .reads import Reads
from .rows import Rebased, collision_message, dec, enc
from .schema import GONE_SQL

FORGET_BATCH = 5000  # rows forgotten per transaction: the store's lock is never held for long


class Upkeep:
    """The writes that keep the database small and pointed at the right destination, through ``db``."""

    def __init__(self, db: Database, reads: Reads):
        self.db = db
        self.reads = reads

    def forget_done(self, before: float, limit: int = FORGET_BATCH) -> int:
        """Drop up to ``limit`` rows deleted or archived (moved there: ``updated_at``) before wall time
        ``before``, oldest first, in one transaction, committed; returns how many (fewer than
        ``limit``: none are left). Also drops parts no open upload owns. Callers loop until done,
        so the lock is taken for one batch at a time.

        A forgotten row no longer holds its key: a file elsewhere in the tree that would go to that
        key (only a changed prefix can make one) is then uploaded over the object, whose only copy
        was in S3 (``forget_after`` in the README says so).
        """
        with self.db.lock:
            cur = self.db.write("DELETE FROM files WHERE path IN (SELECT path FROM files INDEXED BY files_gone "
                                f"WHERE {GONE_SQL} AND updated_at < ? ORDER BY updated_at LIMIT ?)", (before, limit))
            n = cur.rowcount
            if n < limit:  # the last batch: parts left by an upload id since replaced (never read again)
                self.db.write("DELETE FROM parts WHERE NOT EXISTS (SELECT 1 FROM files WHERE files.path = parts.path "
                              "AND files.upload_id = parts.upload_id)")
            self.db.commit_locked()
            return n

    def forget_done_all(self, before: float, stop: Optional[threading.Event] = None,
                        limit: int = FORGET_BATCH) -> int:
        """:meth:`forget_done` batch after batch until none is left (or ``stop`` is set); how many."""
        total = 0
        while stop is None or not stop.is_set():
            n = self.forget_done(before, limit)
            total += n
            if n < limit:
                break
        return total

    def forget_vanished_uploaded(self, before: float, gone: Callable[[str], bool],
                                 stop: Optional[threading.Event] = None, limit: int = FORGET_BATCH) -> int:
        """Drop the rows of files uploaded at or before ``before`` whose local file is ``gone(rel)``:
        something else deleted it (a recorder that removes its oldest clips, with cleanup off), so no
        pass of ours will ever move the row on. A file that comes back later is a new file. Returns
        how many; a page at a time, in upload order (the partial index on uploaded_at)."""
        total = 0
        cursor: Optional[Tuple[Optional[float], bytes]] = None
        while stop is None or not stop.is_set():
            page = self.reads.uploaded_page("uploaded_at", cursor, limit, uploaded_before=before)
            if not page:
                break
            cursor = (page[-1].uploaded_at, enc(page[-1].rel))
            vanished = [(enc(r.rel),) for r in page if gone(r.rel)]
            if vanished:
                cur = self.db.write("DELETE FROM files WHERE path = ? AND state = 'uploaded'", vanished, many=True)
                total += max(cur.rowcount, 0)
            if len(page) < limit:
                break
        return total

    def set_meta(self, name: str, value: str) -> None:
        self.db.write("INSERT INTO meta(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                      (name, value))

    def add_to_meta_counter(self, name: str, amount: int) -> None:
        self.db.write("INSERT INTO meta(name, value) VALUES(?, ?) "
                      "ON CONFLICT(name) DO UPDATE SET value = CAST(value AS INTEGER) + ?", (name, str(amount), amount))

    def rebase_destination(self, meta_name: str, meta_value: str, key_for: Callable[[str, int], str],
                           present: Callable[[str], bool]) -> Rebased:
        """Point every row whose file may be sent again at a new destination, and record it as
        ``meta_name`` = ``meta_value``: all in one transaction (a crash leaves the old state whole,
        and the next start does it again).

        - ``uploaded`` rows whose file is ``present(rel)`` go back to ``pending``: their proof was
          about the old destination;
        - waiting rows (pending, uploading, failed, parked) become ``pending`` with their attempts
          and errors cleared, and lose their multipart upload id and recorded parts: those belong to
          the old destination (never aborted on the new one, where they do not exist);
        - both get the key ``key_for(rel, mtime_ns)``. A key another row already holds (a UNIQUE
          constraint on ``files.key`` refuses it) is tried again after every other row has moved
          (a key freed by a row moved later in the pass is then free); a row still refused is
          parked without a key as a collision (as :meth:`.moves.Moves.discover` parks one), reported in
          ``clashes``; a row parked as a collision already whose new key is taken stays so;
        - ``deleted``/``archived`` rows, and ``uploaded`` rows whose file is gone, stay as they are:
          there is nothing left to send.

        Returns :class:`Rebased`. Raises StoreError when the database refuses (nothing changed).
        """
        now = self.db.clock()
        resent = waiting = 0
        clashes: List[Tuple[bytes, str, str]] = []
        states = ("uploaded",) + WAITING_STATES
        rebase_sql = ("UPDATE files SET {key}state = 'pending', md5 = NULL, etag = NULL, uploaded_at = NULL, "
                      "attempts = 0, next_attempt_at = NULL, last_error = NULL, error_kind = NULL, upload_id = NULL, "
                      "part_size = NULL, updated_at = ?, discovered_at = coalesce(?, discovered_at) WHERE path = ?")
        with self.db.lock:
            self.db.commit_locked()  # the transaction below holds this change alone: all of it or none
            conn = self.db.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                after = b""
                while True:
                    # in path order over the primary key (a filter on state would let SQLite pick the
                    # state index and sort every page: quadratic)
                    rows = conn.execute("SELECT path, key, state, mtime_ns FROM files WHERE path > ? ORDER BY path "
                                        "LIMIT 500", (after,)).fetchall()
                    if not rows:
                        break
                    after = rows[-1][0]
                    for raw, old_key, state, mtime_ns in rows:
                        if state not in states:
                            continue
                        rel = dec(raw)
                        if state == "uploaded":
                            if not present(rel):
                                continue
                            resent += 1
                        else:
                            waiting += 1
                            conn.execute("DELETE FROM parts WHERE path = ?", (raw,))  # (an uploaded row has none)
                        new_key = key_for(rel, mtime_ns)
                        params = (now, now if state == "uploaded" else None, raw)
                        try:  # one statement per row: the common case costs one UPDATE
                            conn.execute(rebase_sql.format(key="key = ?, "), (new_key, *params))
                        except sqlite3.IntegrityError:  # another row holds new_key: try it again at the end
                            if old_key is None:
                                continue  # parked as a collision already: it stays so, and is retried as such
                            conn.execute(rebase_sql.format(key=""), params)
                            clashes.append((raw, old_key, new_key))
                while clashes:  # until a round moves none: keys freed by rows rebased after them
                    left = [c for c in clashes if not self._rekey(c[0], c[2])]
                    if len(left) == len(clashes):
                        break
                    clashes = left
                for raw, _old, new_key in clashes:  # its old key is the old destination's: never sent there
                    holder = conn.execute("SELECT path, state FROM files WHERE key = ?", (new_key,)).fetchone()
                    message = collision_message(dec(raw), new_key, dec(holder[0]), holder[1])
                    conn.execute("UPDATE files SET key = NULL, state = 'parked', error_kind = 'collision', "
                                 "last_error = ?, next_attempt_at = ? WHERE path = ?", (message, now, raw))
                    conn.execute("INSERT INTO errors(at, path, kind, message) VALUES(?, ?, 'collision', ?)",
                                 (now, raw, message))
                conn.execute("INSERT INTO meta(name, value) VALUES(?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (meta_name, meta_value))
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.DatabaseError):
                    raise StoreError(explain(self.db.path, exc)) from None
                raise
        return Rebased(resent, waiting, [(dec(raw), old, new) for raw, old, new in clashes])

    def _rekey(self, raw: bytes, key: str) -> bool:
        """Give row ``raw`` the key ``key`` in the open transaction; False when another row holds it
        (only a constraint refuses it, and only this statement is undone)."""
        try:
            self.db.conn.execute("UPDATE files SET key = ? WHERE path = ?", (key, raw))
            return True
        except sqlite3.IntegrityError:
            return False

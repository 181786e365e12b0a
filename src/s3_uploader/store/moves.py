"""The store's writes that move a file's row through the state machine (:mod:`.machine`): a file
discovered, its upload started, finished, sent in one step, failed, requeued, removed, forgotten;
and what goes with them (an error recorded, a multipart upload's parts).

The one-step move is for small files sent by :mod:`s3_uploader.sender`: their request lasts
milliseconds and a single PUT has nothing to resume, so their row stays waiting while it is in
flight (a crash leaves it waiting: it is sent again) and moves to uploaded only when S3's answer
proved the object, and only if the row still describes the version sent (see :meth:`Moves.record_sent`).

A file whose key another row holds (a prefix changed, two names that an older version mapped to
one key) gets a row *without* a key: parked, ``error_kind = 'collision'``, ``last_error`` naming
both paths and the key; it is never uploaded while so. Discovering it again (a change, a retry)
gives it its own key when that key is free by then.

Hooks: when :attr:`Moves.events` (an :class:`~s3_uploader.events.EventLog`) wants an event for a
move to uploaded, parked, deleted or archived, the move writes it into ``hook_events`` in the same
transaction (:mod:`s3_uploader.events` owns that table's statements).
"""
from __future__ import annotations

import logging
import sqlite3
from typing import Any, Callable, List, Optional, Sequence, Tuple

from ..version import is_new_version
from .database import Database, StoreError
from .machine import DONE_STATES, ONE_STEP_SOURCES, IllegalTransition, move_sql
from .reads import Reads
from .rows import Part, Record, collision_message, dec, display, enc, parent
from .schema import WAITING_SQL

log = logging.getLogger(__name__)

ERRORS_KEPT = 200
_INSERT_NEW_HEAD = "INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, discovered_at, updated_at, rank) VALUES"
_INSERT_ROW = "(?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)"
_INSERT_TAIL = " ON CONFLICT(path) DO NOTHING"
_INSERT_NEW = _INSERT_NEW_HEAD + _INSERT_ROW + _INSERT_TAIL
INSERT_CHUNK = 100  # rows per INSERT of discover_many: 9 values each, under the oldest bound-variable limit (999)


# the one-step move of a sent file (record_sent): the row still waiting, with the signature sent
# and a key; row by row (_SENT_ONE) or for a batch joined to the VALUES list ``sent`` (_SENT_GUARD)
_ONE_STEP = ",".join(f"'{s}'" for s in ONE_STEP_SOURCES)  # constants of the state machine, not input
_SENT_SET = ("UPDATE files SET state = 'uploaded', updated_at = ?, uploaded_at = ?, attempts = 0, "
             "next_attempt_at = NULL, last_error = NULL, error_kind = NULL, upload_id = NULL, part_size = NULL, "
             "checksum = NULL")
_SENT_ONE = (_SENT_SET.replace("uploaded_at = ?", "md5 = ?, etag = ?, uploaded_at = ?")
             + f" WHERE path = ? AND state IN ({_ONE_STEP}) AND size = ? AND mtime_ns = ? AND inode = ? "
             "AND key IS NOT NULL")
_SENT_GUARD = (f"files.path = sent.path AND files.state IN ({_ONE_STEP}) AND files.size = sent.size "
               "AND files.mtime_ns = sent.mtime_ns AND files.inode = sent.inode AND files.key IS NOT NULL")
# UPDATE ... FROM came with SQLite 3.33 (Python 3.9+ may be linked to an older one: row by row there)
SET_BASED = sqlite3.sqlite_version_info >= (3, 33, 0)
SENT_CHUNK = 100  # rows per set-based statement: 7 values each, under the oldest bound-variable limit (999)


def _no_priority(rel: str) -> int:
    return 0


class Moves:
    """Every write that moves a row, through ``db``; ``reads`` for the rows they look at first."""

    def __init__(self, db: Database, reads: Reads):
        self.db = db
        self.reads = reads
        # hooks (events.EventLog): set by the daemon; records an event row in the transaction of the
        # move that causes it, only for the events a hook or the webhook is configured for
        self.events: Optional[Any] = None
        # the priority rank of a relative path (order.Order.rank), written with each row discovered;
        # set by rerank (discovery calls it at its first scan, and after a reload changed the priority)
        self.ranker: Callable[[str], int] = _no_priority

    def _event(self, event: str, raws: Sequence[bytes]) -> None:
        """Record ``event`` for the rows ``raws`` in the open transaction (the caller holds the lock
        since its move, so both are committed together)."""
        if not raws:
            return
        try:
            with self.db.transaction() as conn:
                assert self.events is not None
                self.events.record(conn, event, raws)
        except StoreError:
            raise
        except Exception:  # a bug in the hooks' bookkeeping never fails the move itself
            log.exception("Hooks: could not record the %s event of %d file(s); the move stands", event, len(raws))

    def discover(self, rel: str, key: str, size: int, mtime_ns: int, inode: int,
                 retry_at: Optional[float] = None) -> Record:
        """Record a new file as pending, or move a finished/stuck row whose file changed back to
        pending with the new signature. Returns the row.

        A row being uploaded (``uploading``) is returned as it is: its worker owns it.

        ``key`` is the key the file would get now (from its own mtime). A waiting row keeps the key
        it holds (nothing of it is in S3 yet, and an open multipart upload belongs to that key). A
        row whose file is in S3 (uploaded, deleted or archived) and now describes another version
        takes ``key``: under a dated prefix the new version goes to its own day's key and the
        earlier day's object, perhaps its only copy, is never replaced (whether the file was changed
        in place or replaced by another cannot be told apart: inode numbers are reused); without
        placeholders, or on the same day, ``key`` is the same key. A new row, a deleted/archived one or one parked for a collision
        whose ``key`` another row holds is (left) parked without a key, due again at ``retry_at``,
        with ``last_error`` saying which file holds it (:func:`collision_message`): check
        ``Record.key is None``.
        """
        now = self.db.clock()
        raw = enc(rel)
        with self.db.lock:
            old = self.reads.get(rel)
            if old is None:
                if not self._collided(rel, key, size, mtime_ns, inode, now, retry_at, None):
                    self.db.write("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, discovered_at, "
                                  "updated_at, rank) VALUES(?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
                                  (raw, enc(parent(rel)), key, size, mtime_ns, inode, now, now, self.ranker(rel)))
                return self.reads.written(rel)
            if old.state == "uploading":
                # a worker is sending it: the worker's re-check finds the change and requeues it (a
                # scan that moved it back to pending here made the worker's finish an illegal move)
                return old
            new_key = old.key
            if old.key is None or (old.state in DONE_STATES
                                   and is_new_version(old.state, old.signature, (size, mtime_ns, inode))):
                new_key = key  # another version (or one that never had a key): its own key, decided now
                if self._collided(rel, key, size, mtime_ns, inode, now, retry_at, old):
                    return self.reads.written(rel)
            if old.state != "pending":
                self._move(rel, "pending", key=new_key)
            if old.signature != (size, mtime_ns, inode):
                # parts sent from another version of the file must never be completed with this
                # one's: forget them, and leave the open upload (if any) without a part size, so
                # the uploader aborts it and starts afresh (servers such as rclone refuse to
                # replace a part with different bytes)
                self.db.write("DELETE FROM parts WHERE path = ?", (raw,))
                self.db.write("UPDATE files SET part_size = NULL WHERE path = ?", (raw,))
            self.db.write("UPDATE files SET size=?, mtime_ns=?, inode=?, attempts=0, next_attempt_at=NULL, "
                          "last_error=NULL, error_kind=NULL, updated_at=?, discovered_at=?, rank=? WHERE path=?",
                          (size, mtime_ns, inode, now, now if old.state in DONE_STATES else old.discovered_at,
                           self.ranker(rel), raw))
            return self.reads.written(rel)

    def _collided(self, rel: str, key: str, size: int, mtime_ns: int, inode: int, now: float,
                  retry_at: Optional[float], old: Optional[Record]) -> bool:
        """If another row holds ``key``: write ``rel``'s row (new, or ``old``) parked without a key,
        and return True. Called under the lock."""
        rows = self.db.read("SELECT path, state FROM files WHERE key = ? AND path != ?", (key, enc(rel)))
        if not rows:
            return False
        message = collision_message(rel, key, dec(rows[0][0]), rows[0][1])
        raw = enc(rel)
        if old is None:
            self.db.write("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, next_attempt_at, "
                          "last_error, error_kind, discovered_at, updated_at) "
                          "VALUES(?, ?, NULL, 'parked', ?, ?, ?, ?, ?, 'collision', ?, ?)",
                          (raw, enc(parent(rel)), size, mtime_ns, inode, retry_at, message, now, now))
            if self.events is not None and self.events.wanted("parked"):  # hooks (a moved row: in _move)
                self._event("parked", [raw])
        else:
            # without a key it has no upload to resume (one left open is aborted at start-up as
            # owned by no file)
            self.db.write("DELETE FROM parts WHERE path = ?", (raw,))
            self._move(rel, "parked", key=None, size=size, mtime_ns=mtime_ns, inode=inode, attempts=0,
                       next_attempt_at=retry_at, last_error=message, error_kind="collision", upload_id=None,
                       part_size=None,
                       discovered_at=now if old.state in DONE_STATES else old.discovered_at)
        self.add_error(rel, "collision", message)
        return True

    def discover_many(self, rows: Sequence[Tuple[str, str, int, int, int]],
                      retry_at: Optional[float] = None) -> List[Record]:
        """Insert brand-new files as pending in one statement batch: (rel, key, size, mtime_ns, inode);
        rows whose path is known already are left alone. A file whose key another row (or an
        earlier file of the batch) holds is inserted parked without a key, as :meth:`discover` does;
        returns those rows (empty: every new file has its key)."""
        now = self.db.clock()
        rank = self.ranker
        collided: List[Record] = []
        with self.db.transaction() as conn:
            for at in range(0, len(rows), INSERT_CHUNK):
                chunk = rows[at:at + INSERT_CHUNK]
                params: List[Any] = []
                for r, k, s, m, i in chunk:
                    params += (enc(r), enc(parent(r)), k, s, m, i, now, now, rank(r))
                try:
                    # one statement for the chunk (executemany runs one per row, and each releases
                    # the interpreter lock); ON CONFLICT(path), not OR IGNORE: OR IGNORE would also
                    # skip, silently, a file whose key another row holds (a lost file); that one
                    # raises here instead, and takes back this statement's rows only
                    conn.execute(_INSERT_NEW_HEAD + ",".join([_INSERT_ROW] * len(chunk)) + _INSERT_TAIL, params)
                except sqlite3.IntegrityError:
                    collided += self._discover_one_by_one(chunk, now, retry_at)
        return collided

    def _discover_one_by_one(self, rows: Sequence[Tuple[str, str, int, int, int]], now: float,
                             retry_at: Optional[float]) -> List[Record]:
        """discover_many's slow path for a chunk in which a key was found taken (its statement took
        back all of its rows; the chunks before it are kept)."""
        collided: List[Record] = []
        for rel, key, size, mtime_ns, inode in rows:
            if self.db.read("SELECT 1 FROM files WHERE path = ?", (enc(rel),)):
                continue
            if self._collided(rel, key, size, mtime_ns, inode, now, retry_at, None):
                collided.append(self.reads.written(rel))
            else:
                self.db.conn.execute(_INSERT_NEW, (enc(rel), enc(parent(rel)), key, size, mtime_ns, inode, now, now,
                                                   self.ranker(rel)))
        return collided

    def start_upload(self, rel: str, size: int, mtime_ns: int, inode: int) -> None:
        """pending/failed/parked -> uploading, with the signature of the version about to be read."""
        self._move(rel, "uploading", size=size, mtime_ns=mtime_ns, inode=inode)

    def finish_upload(self, rel: str, size: int, mtime_ns: int, inode: int, md5: Optional[str],
                      etag: Optional[str], checksum: Optional[str] = None) -> None:
        """uploading -> uploaded: S3 confirmed the object and the file did not change while read.
        ``checksum`` is the checksum S3 answered it stores with the object (None: none), which
        cleanup compares before it removes the file. The parts recorded for its multipart upload
        (if any) are forgotten with it."""
        now = self.db.clock()
        with self.db.lock:
            self._move(rel, "uploaded", size=size, mtime_ns=mtime_ns, inode=inode, md5=md5, etag=etag,
                       checksum=checksum, uploaded_at=now, attempts=0, next_attempt_at=None, last_error=None, error_kind=None,
                       upload_id=None, part_size=None)
            self.db.write("DELETE FROM parts WHERE path = ?", (enc(rel),))

    def record_sent(self, rows: Sequence[Tuple[str, int, int, int, str, str]]) -> List[bool]:
        """The one-step move to uploaded of single PUTs the asyncio sender sent: (rel, size, mtime_ns,
        inode, md5, etag) each, for rows still waiting (pending, failed or parked) *with that
        signature* (a row that describes another version, or has moved on, is left as it is).
        Returns, per row, whether it moved.

        Set-based where SQLite has ``UPDATE ... FROM`` (3.33): a batch is two statements, however
        many rows it has (each statement Python's sqlite3 runs, and each row it fetches, releases
        the interpreter lock, which in the busy daemon hands it to another thread and back); the
        same guard, row by row, otherwise, or for a batch that names a path twice."""
        now = self.db.clock()
        hook = self.events is not None and self.events.wanted("uploaded")
        with self.db.lock:  # hooks: the events in the transaction of the moves
            if SET_BASED and len({r[0] for r in rows}) == len(rows):
                moved: List[bool] = []
                for i in range(0, len(rows), SENT_CHUNK):
                    moved += self._sent_together(rows[i:i + SENT_CHUNK], now)
            else:
                moved = self._moves(_SENT_ONE, [(now, md5, etag, now, enc(r), s, m, i)
                                                for r, s, m, i, md5, etag in rows])
            if hook:
                self._event("uploaded", [enc(r[0]) for r, m in zip(rows, moved) if m])
            return moved

    def _sent_together(self, rows: Sequence[Tuple[str, int, int, int, str, str]], now: float) -> List[bool]:
        """record_sent of up to SENT_CHUNK rows with distinct paths: which rows the guard refuses (one
        SELECT, one row back), then one UPDATE that moves every other. Under the lock, in one
        transaction, nothing writes between the two, so the rows the SELECT passes are exactly the
        rows the UPDATE moves. A constraint that refuses the UPDATE (it then takes back only itself)
        sends the batch row by row, where it refuses only its own row."""
        # the batch as a table; a subquery, not WITH: Python's sqlite3 counts the rows a statement
        # changed only when it begins with UPDATE/INSERT/DELETE
        sent = ("(SELECT column1 AS n, column2 AS path, column3 AS size, column4 AS mtime_ns, column5 AS inode, "
                f"column6 AS md5, column7 AS etag FROM (VALUES {','.join(['(?,?,?,?,?,?,?)'] * len(rows))})) AS sent")
        params: List[Any] = []
        for n, (r, s, m, i, md5, etag) in enumerate(rows):
            params += (n, enc(r), s, m, i, md5, etag)
        with self.db.transaction() as conn:
            found = conn.execute(f"SELECT group_concat(n) FROM {sent} WHERE NOT EXISTS (SELECT 1 FROM files "
                                 f"WHERE {_SENT_GUARD})", params).fetchone()[0]
            refused = {int(n) for n in found.split(",")} if found else set()
            if len(refused) == len(rows):
                return [False] * len(rows)
            try:
                cur = conn.execute(f"{_SENT_SET}, md5 = sent.md5, etag = sent.etag FROM {sent} WHERE {_SENT_GUARD}",
                                   [now, now] + params)
            except sqlite3.IntegrityError:
                return self._moves(_SENT_ONE, [(now, md5, etag, now, enc(r), s, m, i)
                                               for r, s, m, i, md5, etag in rows])
            # the two statements agree by construction; if they ever did not, the answer would
            # be wrong for some row (a moved row not counted, or a refused one reported): say so
            if cur.rowcount != len(rows) - len(refused):
                raise RuntimeError(f"{cur.rowcount} rows moved to uploaded, {len(rows) - len(refused)} expected")
            return [n not in refused for n in range(len(rows))]

    def _moves(self, sql: str, params: Sequence[Sequence[Any]]) -> List[bool]:
        """Run the guarded move ``sql`` once per row in the open transaction; which rows moved."""
        out = []
        with self.db.transaction() as conn:
            execute = conn.execute
            for p in params:
                try:
                    out.append(execute(sql, p).rowcount == 1)
                except sqlite3.IntegrityError:  # a move the schema forbids (a keyless row sent): not moved
                    out.append(False)
        return out

    def fail_upload(self, rel: str, kind: str, message: str, next_attempt_at: Optional[float], park: bool,
                    count_attempt: bool = True) -> int:
        """uploading/pending/failed/parked -> failed (or parked); returns the attempt count now
        recorded. A parked row parked again (a file no retry can send, checked again) is no error,
        nor a failed row failed again (a bug hit while checking it before its next upload)."""
        with self.db.lock:
            rec = self.reads.get(rel)
            if rec is None:
                raise IllegalTransition(f"no row for {display(rel)}")
            attempts = rec.attempts + (1 if count_attempt else 0)
            self._move(rel, "parked" if park else "failed", attempts=attempts, next_attempt_at=next_attempt_at,
                       last_error=message, error_kind=kind)
            self.add_error(rel, kind, message)
            return attempts

    def requeue(self, rel: str, size: int, mtime_ns: int, inode: int) -> None:
        """uploading -> pending: the file changed while it was read; it will be checked again."""
        self._move(rel, "pending", size=size, mtime_ns=mtime_ns, inode=inode)

    def mark_removed(self, rel: str, state: str, signature: Optional[Tuple[int, int, int]] = None) -> None:
        """uploaded -> deleted or archived (cleanup), after S3 proved the object; with ``signature``,
        only a row that still describes that version (a newer file at the path has a row of its own
        that must not say it was removed). IllegalTransition otherwise."""
        if signature is None:
            self._move(rel, state)
            return
        sql, sources = move_sql(state, ())
        sql = sql.replace("WHERE path = ?", "WHERE size = ? AND mtime_ns = ? AND inode = ? AND path = ?")
        with self.db.lock:
            if self.db.write(sql, (state, self.db.clock(), *signature, enc(rel), *sources)).rowcount != 1:
                raise IllegalTransition(f"{display(rel)}: its row no longer describes the version removed")
            if self.events is not None and self.events.wanted(state):  # hooks: in the move's transaction
                self._event(state, [enc(rel)])

    def forget(self, rel: str) -> None:
        """Drop the row of a file that vanished before it was uploaded (nothing to send any more)."""
        raw = enc(rel)
        self.db.write("DELETE FROM parts WHERE path = ?", (raw,))
        self.db.write("DELETE FROM files WHERE path = ? AND state IN ('pending', 'failed', 'parked', 'uploading')",
                      (raw,))

    def forget_uploaded(self, rel: str, size: int, mtime_ns: int, inode: int) -> bool:
        """Drop the uploaded row of a file that is gone and that S3 does not prove (cleanup), only if
        the row is still uploaded with that signature: a row that has moved on meanwhile (a new file
        at the path, in flight) is left as it is. Returns whether it was dropped."""
        raw = enc(rel)
        with self.db.lock:
            cur = self.db.write("DELETE FROM files WHERE path = ? AND state = 'uploaded' AND size = ? AND mtime_ns = ? "
                                "AND inode = ?", (raw, size, mtime_ns, inode))
            if cur.rowcount != 1:
                return False
            self.db.write("DELETE FROM parts WHERE path = ?", (raw,))
            return True

    def park_new(self, rel: str, size: int, mtime_ns: int, inode: int, kind: str, message: str,
                 retry_at: Optional[float]) -> bool:
        """Record a file that has no row yet as parked without a key, with ``kind`` and ``message``,
        due again at ``retry_at`` (a file whose handling hit a bug before it got its row: it is shown
        by ``status`` instead of being silently missing). Returns False when a row exists already."""
        now = self.db.clock()
        cur = self.db.write("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, next_attempt_at, "
                            "last_error, error_kind, discovered_at, updated_at) "
                            "VALUES(?, ?, NULL, 'parked', ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO NOTHING",
                            (enc(rel), enc(parent(rel)), size, mtime_ns, inode, retry_at, message, kind, now, now))
        if cur.rowcount != 1:
            return False
        self.add_error(rel, kind, message)
        return True

    def recover_interrupted(self) -> int:
        """At start-up: uploads that were in flight when the last run stopped go back to pending
        (an open multipart upload id is kept, so it resumes). Returns how many."""
        cur = self.db.write("UPDATE files SET state = 'pending', updated_at = ? WHERE state = 'uploading'",
                            (self.db.clock(),))
        return cur.rowcount

    def rerank(self, ranker: Callable[[str], int], lowest: int) -> int:
        """Rank rows with ``ranker`` from now on (``lowest``: the rank it gives a path no pattern
        matches; 0 means there are no patterns), and give every waiting row the rank it gives now:
        a changed ``priority`` reorders the backlog. Only rows whose rank changes are written.
        Returns how many."""
        self.ranker = ranker
        with self.db.transaction() as conn:
            if lowest == 0:  # no patterns: every rank is 0, no Python call per row
                cur = conn.execute(f"UPDATE files INDEXED BY files_waiting_path SET rank = 0 WHERE {WAITING_SQL} "
                                   "AND rank != 0")
            else:
                conn.create_function("s3u_rank", 1, lambda raw: ranker(dec(raw)), deterministic=True)
                cur = conn.execute(f"UPDATE files INDEXED BY files_waiting_path SET rank = s3u_rank(path) "
                                   f"WHERE {WAITING_SQL} AND rank != s3u_rank(path)")
            return max(cur.rowcount, 0)

    def retry_parked(self, now: Optional[float] = None, kind: Optional[str] = None) -> int:
        """Make every parked and failed file due now (the ``retry`` command), or with ``kind`` only the
        parked ones whose last failure was of that kind. Returns how many."""
        at = self.db.clock() if now is None else now
        if kind is not None:
            cur = self.db.write("UPDATE files SET next_attempt_at = ?, attempts = 0 "
                                "WHERE state = 'parked' AND error_kind = ?", (at, kind))
        else:
            cur = self.db.write("UPDATE files SET next_attempt_at = ?, attempts = 0 "
                                "WHERE state IN ('parked', 'failed')", (at,))
        return cur.rowcount

    def _move(self, rel: str, dst: str, **fields: Any) -> None:
        sql, sources = move_sql(dst, tuple(fields))
        with self.db.lock:
            # hooks: an event when a hook wants it, in the move's transaction (parked again: none)
            hook = self.events is not None and self.events.wanted(dst) and (
                dst != "parked" or not self.db.read("SELECT 1 FROM files WHERE path = ? AND state = 'parked'",
                                                    (enc(rel),)))
            cur = self.db.write(sql, (dst, self.db.clock(), *fields.values(), enc(rel), *sources))
            if cur.rowcount != 1:
                rec = self.reads.get(rel)
                have = rec.state if rec else "no row"
                raise IllegalTransition(f"{display(rel)}: cannot move {have} -> {dst}")
            if hook:
                self._event(dst, [enc(rel)])

    def add_error(self, rel: Optional[str], kind: str, message: str) -> None:
        cur = self.db.write("INSERT INTO errors(at, path, kind, message) VALUES(?, ?, ?, ?)",
                            (self.db.clock(), enc(rel) if rel is not None else None, kind, message))
        if cur.lastrowid and cur.lastrowid % 50 == 0:
            self.db.write("DELETE FROM errors WHERE id <= ?", (cur.lastrowid - ERRORS_KEPT,))

    def set_multipart(self, rel: str, upload_id: Optional[str], part_size: Optional[int]) -> None:
        raw = enc(rel)
        if upload_id is None:
            self.db.write("DELETE FROM parts WHERE path = ?", (raw,))
        self.db.write("UPDATE files SET upload_id = ?, part_size = ? WHERE path = ?", (upload_id, part_size, raw))

    def add_part(self, rel: str, upload_id: str, part: Part) -> None:
        self.db.write("INSERT OR REPLACE INTO parts(path, upload_id, part_number, size, etag, md5) "
                      "VALUES(?, ?, ?, ?, ?, ?)", (enc(rel), upload_id, part.number, part.size, part.etag, part.md5))

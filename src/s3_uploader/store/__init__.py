"""The state database: one SQLite row per file, moved through an explicit state machine whose
invariants the database itself enforces.

:class:`Store` is the one object the stages use; it owns its parts, one module each:

- :mod:`.machine`: the states, the moves allowed between them (:data:`TRANSITIONS`) and the one
  guarded UPDATE every move is; :class:`IllegalTransition`;
- :mod:`.schema`: tables, indexes, triggers (``state_counts``) and the migrations from schema 1 and 2;
- :mod:`.database`: the connection, its single write step (``transaction``) and group commit;
- :mod:`.reads`: every query that changes nothing (rows, pages, the backlog in upload order, counts,
  the oldest waiting row);
- :mod:`.moves`: every write that moves a row (discover, upload started/finished/sent/failed, removed);
- :mod:`.upkeep`: rows forgotten, meta values, the move to a new destination;
- :mod:`.rows`: the Python values of rows (:class:`Record`, :class:`Part`) and the path encoding;
- :mod:`.claim`: one daemon per database (:class:`DatabaseClaim`).

Hooks: ``store.events`` (an :class:`~s3_uploader.events.EventLog`, set by the daemon) has each move
to uploaded, parked, deleted or archived write its event in the move's own transaction
(:mod:`.moves`); :meth:`Store.connection` is how :mod:`s3_uploader.events` reaches its table.

A move is ``UPDATE ... WHERE path = ? AND state IN (allowed sources)``, so two threads can never
both move the same row. Writes are grouped: they run inside an open transaction that a committer
commits every ``commit_interval`` seconds (group commit); ``commit()`` makes everything so far
durable at once, and anything that acts on a recorded upload (cleanup) calls it first. WAL mode
with ``synchronous=FULL``: a committed upload survives a power cut.

No two rows ever hold the same S3 key (a UNIQUE index); a file whose key another row holds is
parked without one (see :mod:`.moves`), and a CHECK keeps a keyless row out of every state but
parked, deleted and archived. Nothing periodic costs time that grows with the rows: counts are kept
by triggers, the oldest waiting row is one index look-up, and rows removed long ago are forgotten
a bounded batch at a time.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .claim import DatabaseClaim
from .database import Database, StoreError, explain
from .machine import DONE_STATES, ONE_STEP_SOURCES, SOURCES, STATES, TRANSITIONS, WAITING_STATES, IllegalTransition
from .moves import Moves
from .reads import Reads
from .rows import COLUMNS as _COLUMNS  # bench/rows.py times raw queries with it
from .rows import Part, Rebased, Record, collision_message, dec, display, enc
from .schema import SCHEMA_VERSION
from .upkeep import FORGET_BATCH, Upkeep

__all__ = ["DONE_STATES", "FORGET_BATCH", "ONE_STEP_SOURCES", "SCHEMA_VERSION", "SOURCES", "STATES", "TRANSITIONS",
           "WAITING_STATES", "DatabaseClaim", "IllegalTransition", "Part", "Rebased", "Record", "Store", "StoreError",
           "_COLUMNS", "collision_message", "dec", "display", "enc"]


class Store:
    """The state database. Thread-safe: one connection behind a lock, with group commit.

    Each method below is its part's (the docstring is there): :class:`~.reads.Reads`,
    :class:`~.moves.Moves` and :class:`~.upkeep.Upkeep`, which share ``db`` (:class:`~.database.Database`,
    also the way for a test or a benchmark to run raw SQL)."""

    def __init__(self, path: Union[str, os.PathLike], commit_interval: float = 0.05,
                 clock: Callable[[], float] = time.time, readonly: bool = False):
        self.path = Path(path)
        self.clock = clock
        self.db = Database(self.path, commit_interval, clock, readonly)
        self.reads = Reads(self.db)
        self.moves = Moves(self.db, self.reads)
        self.upkeep = Upkeep(self.db, self.reads)

    def start(self) -> "Store":
        """Start the background committer (group commit)."""
        self.db.start()
        return self

    def close(self) -> None:
        """Commit what is pending, stop the committer and close the connection."""
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def commit(self) -> None:
        """Make every write so far durable now. Raises StoreError when the disk refuses."""
        self.db.commit()

    def locked(self) -> Any:
        """The store's lock, for a caller that must act on a row with no write in between (cleanup's
        unlink of the file a row records). Hold it briefly."""
        return self.db.lock

    # -- reading (:class:`.reads.Reads`) -----------------------------------------------------
    def get(self, rel: str) -> Optional[Record]:
        return self.reads.get(rel)

    def get_many(self, rels: Sequence[str]) -> Dict[str, Record]:
        return self.reads.get_many(rels)

    def in_dir(self, rel_dir: str) -> Dict[str, Record]:
        return self.reads.in_dir(rel_dir)

    def signatures_of(self, rels: Sequence[str]) -> Dict[str, Tuple[str, int, int, int]]:
        return self.reads.signatures_of(rels)

    def in_states(self, states: Sequence[str], after: bytes = b"", limit: int = 1000) -> List[Record]:
        return self.reads.in_states(states, after, limit)

    def waiting_page(self, after: bytes = b"", limit: int = 500) -> List[Tuple[bytes, float]]:
        return self.reads.waiting_page(after, limit)

    def backlog_page(self, newest: bool, after: Optional[Tuple[int, int, bytes]] = None,
                     limit: int = 500) -> List[Tuple[int, int, bytes]]:
        return self.reads.backlog_page(newest, after, limit)

    def due_retries(self, now: float, limit: int, horizon: Optional[float] = None) -> List[Record]:
        return self.reads.due_retries(now, limit, horizon)

    def uploaded_page(self, order: str, after: Optional[Tuple[Optional[float], bytes]] = None, limit: int = 1000,
                      uploaded_before: Optional[float] = None) -> List[Record]:
        return self.reads.uploaded_page(order, after, limit, uploaded_before)

    def counts(self) -> Dict[str, int]:
        return self.reads.counts()

    def oldest_waiting(self) -> Optional[Record]:
        return self.reads.oldest_waiting()

    def last_errors(self, n: int = 10) -> List[Tuple[float, Optional[str], Optional[str], str]]:
        return self.reads.last_errors(n)

    def meta(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return self.reads.meta(name, default)

    def parts(self, rel: str, upload_id: str) -> Dict[int, Part]:
        return self.reads.parts(rel, upload_id)

    def owned_upload_ids(self) -> Dict[str, str]:
        return self.reads.owned_upload_ids()

    def has_key(self, key: str) -> bool:
        return self.reads.has_key(key)

    def key_holder(self, key: str) -> Optional[str]:
        return self.reads.key_holder(key)

    def iter_all(self, batch: int = 1000) -> Iterator[Record]:
        return self.reads.iter_all(batch)

    # -- moving rows (:class:`.moves.Moves`) -------------------------------------------------
    def discover(self, rel: str, key: str, size: int, mtime_ns: int, inode: int,
                 retry_at: Optional[float] = None) -> Record:
        return self.moves.discover(rel, key, size, mtime_ns, inode, retry_at)

    def discover_many(self, rows: Sequence[Tuple[str, str, int, int, int]],
                      retry_at: Optional[float] = None) -> List[Record]:
        return self.moves.discover_many(rows, retry_at)

    def start_upload(self, rel: str, size: int, mtime_ns: int, inode: int) -> None:
        return self.moves.start_upload(rel, size, mtime_ns, inode)

    def finish_upload(self, rel: str, size: int, mtime_ns: int, inode: int, md5: Optional[str],
                      etag: Optional[str], checksum: Optional[str] = None) -> None:
        return self.moves.finish_upload(rel, size, mtime_ns, inode, md5, etag, checksum)

    def record_sent(self, rows: Sequence[Tuple[str, int, int, int, str, str]]) -> List[bool]:
        return self.moves.record_sent(rows)

    def fail_upload(self, rel: str, kind: str, message: str, next_attempt_at: Optional[float], park: bool,
                    count_attempt: bool = True) -> int:
        return self.moves.fail_upload(rel, kind, message, next_attempt_at, park, count_attempt)

    def requeue(self, rel: str, size: int, mtime_ns: int, inode: int) -> None:
        return self.moves.requeue(rel, size, mtime_ns, inode)

    def mark_removed(self, rel: str, state: str, signature: Optional[Tuple[int, int, int]] = None) -> None:
        return self.moves.mark_removed(rel, state, signature)

    def forget(self, rel: str) -> None:
        return self.moves.forget(rel)

    def forget_uploaded(self, rel: str, size: int, mtime_ns: int, inode: int) -> bool:
        return self.moves.forget_uploaded(rel, size, mtime_ns, inode)

    def park_new(self, rel: str, size: int, mtime_ns: int, inode: int, kind: str, message: str,
                 retry_at: Optional[float]) -> bool:
        return self.moves.park_new(rel, size, mtime_ns, inode, kind, message, retry_at)

    def recover_interrupted(self) -> int:
        return self.moves.recover_interrupted()

    def rerank(self, ranker: Callable[[str], int], lowest: int) -> int:
        return self.moves.rerank(ranker, lowest)

    def retry_parked(self, now: Optional[float] = None, kind: Optional[str] = None) -> int:
        return self.moves.retry_parked(now, kind)

    def add_error(self, rel: Optional[str], kind: str, message: str) -> None:
        return self.moves.add_error(rel, kind, message)

    def set_multipart(self, rel: str, upload_id: Optional[str], part_size: Optional[int]) -> None:
        return self.moves.set_multipart(rel, upload_id, part_size)

    def add_part(self, rel: str, upload_id: str, part: Part) -> None:
        return self.moves.add_part(rel, upload_id, part)

    # -- upkeep (:class:`.upkeep.Upkeep`) ----------------------------------------------------
    def forget_done(self, before: float, limit: int = FORGET_BATCH) -> int:
        return self.upkeep.forget_done(before, limit)

    def forget_done_all(self, before: float, stop: Optional[threading.Event] = None,
                        limit: int = FORGET_BATCH) -> int:
        return self.upkeep.forget_done_all(before, stop, limit)

    def forget_vanished_uploaded(self, before: float, gone: Callable[[str], bool],
                                 stop: Optional[threading.Event] = None, limit: int = FORGET_BATCH) -> int:
        return self.upkeep.forget_vanished_uploaded(before, gone, stop, limit)

    def set_meta(self, name: str, value: str) -> None:
        return self.upkeep.set_meta(name, value)

    def add_to_meta_counter(self, name: str, amount: int) -> None:
        return self.upkeep.add_to_meta_counter(name, amount)

    def rebase_destination(self, meta_name: str, meta_value: str, key_for: Callable[[str, int], str],
                           present: Callable[[str], bool]) -> Rebased:
        return self.upkeep.rebase_destination(meta_name, meta_value, key_for, present)

    # -- a table another module owns (history.py: history_minutes) -----------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement in the open group-commit transaction (committed with the rest
        within ``commit_interval``); returns the number of rows it changed."""
        return max(self.db.write(sql, params).rowcount, 0)

    def query(self, sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        """The rows of one read statement. Raises StoreError when the database cannot be read."""
        return self.db.read(sql, params)

    # -- hooks (events.py: hook_events) ---------------------------------------------------------------
    @property
    def events(self) -> Optional[Any]:
        """The :class:`~s3_uploader.events.EventLog` the moves record hook events with (None: none)."""
        return self.moves.events

    @events.setter
    def events(self, log: Optional[Any]) -> None:
        self.moves.events = log

    @contextlib.contextmanager
    def connection(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, for events.py's several statements at once: with ``write``,
        inside the open group-commit transaction (durable with the next commit, or at once with
        :meth:`commit`). A database error becomes StoreError."""
        if write:
            with self.db.transaction() as conn:
                yield conn
            return
        with self.db.lock:
            try:
                yield self.db.conn
            except sqlite3.DatabaseError as exc:
                raise StoreError(explain(self.path, exc)) from None

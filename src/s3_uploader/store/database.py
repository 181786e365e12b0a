"""The state database's connection: one SQLite connection behind a lock, its single write step
(:meth:`Database.transaction`) and group commit.

Writes are grouped: they run inside an open transaction that a committer thread commits every
``commit_interval`` seconds; ``commit()`` makes everything so far durable at once, and anything
that acts on a recorded upload (cleanup) calls it first. WAL mode with ``synchronous=FULL``: a
committed upload survives a power cut.
"""
from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

from .machine import IllegalTransition
from .schema import SCHEMA_VERSION, migrate

log = logging.getLogger(__name__)


class StoreError(Exception):
    """The state database cannot be used (corrupt, unwritable, full disk); the message says which."""


class Database:
    """One SQLite connection to the state database, thread-safe behind ``lock``, with group commit.
    The store's parts (:mod:`.reads`, :mod:`.moves`, :mod:`.upkeep`) run their SQL through it:
    :meth:`read`, and :meth:`write` or :meth:`transaction` for every write."""

    def __init__(self, path: Path, commit_interval: float, clock: Callable[[], float], readonly: bool):
        self.path = path
        self.clock = clock
        self.commit_interval = commit_interval
        self.lock = threading.RLock()
        self._dirty = False
        self._stop = threading.Event()
        self._written = threading.Event()  # set by every write: the committer sleeps until one comes
        self._committer: Optional[threading.Thread] = None
        self.broken: Optional[StoreError] = None  # set when a failure lost uncommitted writes
        # schema 3's state_counts and indexes exist (false only for a read-only look at an older schema)
        self.counted = True
        self.conn = self._open(readonly)

    # -- opening and closing -------------------------------------------------------------------
    def _open(self, readonly: bool) -> sqlite3.Connection:
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreError(f"State database {self.path} does not exist (has the daemon run yet?)")
                uri = self.path.absolute().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=10)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                # a database the daemon has not opened since an upgrade has no counts yet: count rows
                self.counted = bool(conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'state_counts'").fetchone())
                return conn
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"State database {self.path} was written by a newer s3-uploader "
                                 f"(schema {row[0]} > {SCHEMA_VERSION}); upgrade s3-uploader")
            migrate(conn, None if row is None else int(row[0]), self.clock())
            # a write that fires a trigger (every row write: state_counts) opens a statement journal,
            # a temp file by default, which doubled the cost of a row write; in memory it adds a
            # quarter. Other temp use stays small: every sort we run has a LIMIT (set after the
            # migrations, whose index builds sort every row)
            conn.execute("PRAGMA temp_store=MEMORY")
            return conn
        except sqlite3.DatabaseError as exc:
            raise StoreError(explain(self.path, exc)) from None
        except OSError as exc:
            raise StoreError(f"State database {self.path} cannot be opened: {exc.strerror or exc}") from None

    def start(self) -> None:
        """Start the background committer (group commit)."""
        if self._committer is None:
            self._committer = threading.Thread(target=self._commit_loop, name="store-committer", daemon=True)
            self._committer.start()

    def close(self) -> None:
        """Commit what is pending, stop the committer and close the connection."""
        self._stop.set()
        self._written.set()
        if self._committer is not None:
            # it is asleep or in a commit, which the final commit below waits for anyway (under the
            # lock); a deadline here only keeps a wedged thread from hiding that wait
            self._committer.join(timeout=10.0)
            if self._committer.is_alive():
                log.warning("State database: the committer thread did not stop within 10 s; committing anyway")
            self._committer = None
        with self.lock:
            try:
                self.commit_locked()
            finally:
                self.conn.close()

    # -- transactions -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The open group-commit transaction (begun if there is none), under the lock, for one write
        step. A database error becomes StoreError (:meth:`_failed`); whatever happens, a transaction
        still open is left to the committer, which commits it at the next interval."""
        with self.lock:
            self._check_usable()
            had = self.conn.in_transaction
            try:
                if not had:
                    self.conn.execute("BEGIN IMMEDIATE")
                yield self.conn
            except sqlite3.DatabaseError as exc:
                raise self._failed(exc, had) from None
            finally:
                if self.conn.in_transaction:
                    self._dirtied()

    def write(self, sql: str, params: Sequence[Any] = (), many: bool = False) -> sqlite3.Cursor:
        """Run one write (``many``: once per row of ``params``) in the open group-commit transaction."""
        with self.transaction() as conn:
            try:
                return (conn.executemany if many else conn.execute)(sql, params)
            except sqlite3.IntegrityError as exc:
                # a constraint refused this one statement (the transaction is intact): a move the
                # invariants forbid, e.g. a keyless collision row sent towards upload; never a broken
                # database, so the caller's per-file handling decides, as for any refused move
                raise IllegalTransition(f"the database refused it: {exc}") from None

    def _dirtied(self) -> None:
        """A write is in the open transaction: the committer (asleep until one comes) commits it."""
        self._dirty = True
        if not self._written.is_set():
            self._written.set()

    def _check_usable(self) -> None:
        if self.broken is not None:
            raise StoreError(str(self.broken))

    def _failed(self, exc: sqlite3.DatabaseError, had_transaction: bool) -> StoreError:
        """The StoreError for ``exc``. If it cost the open transaction (SQLite rolls back on a full
        disk), every later write is refused: the rows written since the last commit are gone, and
        carrying on would act on them as if they were not (a new file's row, an upload's record).
        A restart re-derives them from the tree."""
        err = StoreError(explain(self.path, exc))
        if had_transaction and not self.conn.in_transaction:
            self.broken = err
        return err

    def commit(self) -> None:
        """Make every write so far durable now. Raises StoreError when the disk refuses."""
        with self.lock:
            self.commit_locked()

    def commit_locked(self) -> None:
        """:meth:`commit`, for a caller that holds ``lock`` already."""
        self._check_usable()
        if self.conn.in_transaction:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise self._failed(exc, True) from None
        self._dirty = False

    def _commit_loop(self) -> None:
        # idle, it sleeps until a write comes (no polling: a daemon watching an uploaded tree writes
        # nothing for minutes); then waits one commit_interval, so the writes of that window are
        # committed together
        while not self._stop.is_set():
            self._written.wait()
            if self._stop.wait(self.commit_interval):
                return  # close() commits what is left
            self._written.clear()  # a write from now on sets it again; those before are committed below
            if self._dirty:
                try:
                    self.commit()
                except StoreError as exc:
                    if self.broken is not None:
                        return  # every writer, and close(), now raise it: the daemon says it and stops
                    log.error("%s", exc)
                    self._written.set()  # nothing was lost: try again after the next interval

    def read(self, sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        """The rows of one query (a database error becomes StoreError)."""
        with self.lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise StoreError(explain(self.path, exc)) from None


def explain(path: Path, exc: sqlite3.DatabaseError) -> str:
    """The one line that says what a database error means for the operator, and what to do."""
    text = str(exc)
    if "full" in text:
        return f"State database {path}: the disk is full ({text}); free space, nothing was lost"
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (f"State database {path} is corrupt ({text}); move it aside to start a new one (files already "
                f"in S3 will be checked and not lost, but may be uploaded again)")
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return f"State database {path} cannot be written ({text}); check the folder's permissions"
    return f"State database {path}: {text}"

"""The state database: one SQLite row per file, moved through an explicit state machine.

States and the moves allowed between them (anything else raises :class:`IllegalTransition`)::

    pending ──> uploading ──> uploaded ──> deleted | archived
       ^  │          │  │         │
       │  └─> failed <┘  └─> pending (changed while read)
       │       │  ^            │
       │       v  │            └─> pending (changed after upload: sent again)
       └──── parked

    pending | failed | parked ──> uploaded   (one step: a single PUT of the asyncio sender)
    parked ──> parked                          (checked again, parked again: same problem, new error)
    failed ──> failed                          (an internal error before its upload started: failed again)
    deleted | archived ──> parked              (a new file at the path, whose key is another row's)

The one-step move is for small files sent by :mod:`s3_uploader.sender`: their request lasts
milliseconds and a single PUT has nothing to resume, so their row stays waiting while it is in
flight (a crash leaves it waiting: it is sent again) and moves to uploaded only when S3's answer
proved the object, and only if the row still describes the version sent (see :meth:`Store.record_sent`).

A move is ``UPDATE ... WHERE path = ? AND state IN (allowed sources)``, so two threads can never
both move the same row. Writes are grouped: they run inside an open transaction that a committer
commits every ``commit_interval`` seconds (group commit); ``commit()`` makes everything so far
durable at once, and anything that acts on a recorded upload (cleanup) calls it first. WAL mode
with ``synchronous=FULL``: a committed upload survives a power cut.

Paths are stored as bytes (the file system's own), so names that are not valid UTF-8 round-trip.

No two rows ever hold the same S3 key: ``key`` has a UNIQUE index, so the database itself refuses a
second file at an object another file already has (cleanup could otherwise prove one file, delete
it, and let the other be uploaded over its only copy). A file whose key another row holds (a prefix
changed, two names that an older version mapped to one key) gets a row *without* a key: parked,
``error_kind = 'collision'``, ``last_error`` naming both paths and the key; it is never uploaded
while so, and a CHECK keeps a keyless row out of every state but parked, deleted and archived.
Discovering it again (a change, a retry) gives it its own key when that key is free by then.

Nothing periodic costs time that grows with the rows (a camera's months are millions of them):
``state_counts`` holds the number of rows per state, kept by triggers on ``files`` (every insert,
state move and delete, by any caller: the database keeps it, no caller can forget to), so
:meth:`Store.counts` reads seven rows; :meth:`Store.oldest_waiting` walks a partial index of the
waiting rows. Rows deleted or archived long ago are dropped by :meth:`Store.forget_done`, a bounded
batch at a time over a partial index (``[daemon] forget_after``). A migration that rebuilds
``files`` must recount (:func:`_recount`): dropping the table drops its triggers.

Hooks: when :attr:`Store.events` (an :class:`~s3_uploader.events.EventLog`) wants an event for a
move to uploaded, parked, deleted or archived, the move writes it into ``hook_events`` in the same
transaction; :mod:`s3_uploader.events` owns that table's statements.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from .version import Signature, is_new_version

log = logging.getLogger(__name__)

STATES = ("pending", "uploading", "uploaded", "failed", "parked", "deleted", "archived")
WAITING_STATES = ("pending", "uploading", "failed", "parked")  # not yet in S3
DONE_STATES = ("uploaded", "deleted", "archived")

TRANSITIONS: Dict[str, Tuple[str, ...]] = {
    "pending": ("uploading", "failed", "parked"),
    "uploading": ("uploaded", "failed", "parked", "pending"),
    "uploaded": ("pending", "deleted", "archived"),
    "failed": ("uploading", "pending", "parked", "failed"),
    "parked": ("uploading", "pending", "failed", "parked"),
    "deleted": ("pending", "parked"),
    "archived": ("pending", "parked"),
}
SOURCES: Dict[str, Tuple[str, ...]] = {
    dst: tuple(src for src, dsts in TRANSITIONS.items() if dst in dsts) for dst in STATES
}
# the one-step move of :meth:`Store.record_sent` (kept out of TRANSITIONS: every other path to
# uploaded goes through uploading, and finish_upload refuses a row that skipped it)
ONE_STEP_SOURCES = ("pending", "failed", "parked")

# 2: key UNIQUE, NULL while parked for a collision (1 let two rows share a key)
# 3: rows per state kept by triggers (state_counts); partial indexes for the oldest waiting row, for
#    paging through the waiting rows, and for forgetting rows deleted or archived long ago
# 4: hook_events, the hooks' and webhook's deliveries still to make (events.py), written in the
#    transaction of the move that caused them
SCHEMA_VERSION = 4
_FILES_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    path            BLOB PRIMARY KEY,   -- relative path, file system bytes, '/' separators
    dir             BLOB NOT NULL,      -- its folder (for the per-folder rescan diff)
    key             TEXT,               -- the S3 key, decided once; UNIQUE (index files_key); NULL
                                        -- while another row holds the key this file would get
    state           TEXT NOT NULL,
    size            INTEGER NOT NULL,   -- signature of the version this row is about
    mtime_ns        INTEGER NOT NULL,
    inode           INTEGER NOT NULL,
    md5             TEXT,               -- hex MD5 of the bytes sent, when uploaded
    etag            TEXT,               -- the ETag S3 returned
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,               -- wall clock; for failed and parked rows
    last_error      TEXT,
    error_kind      TEXT,
    discovered_at   REAL NOT NULL,
    updated_at      REAL NOT NULL,
    uploaded_at     REAL,               -- when S3 confirmed it
    upload_id       TEXT,               -- an open multipart upload (resumable)
    part_size       INTEGER,
    CHECK (key IS NOT NULL OR state IN ('parked', 'deleted', 'archived'))  -- keyless: never sent
) WITHOUT ROWID;
"""
# one row per event and target (command or webhook); a delivered row is deleted (counted in meta),
# a given-up one kept until pruned (events.py owns every statement on it)
_HOOK_EVENTS_TABLE = """
CREATE TABLE IF NOT EXISTS hook_events (
    id              INTEGER PRIMARY KEY,
    target          TEXT NOT NULL,      -- 'command' or 'webhook'
    event           TEXT NOT NULL,      -- uploaded, parked, deleted, archived
    path            BLOB NOT NULL,      -- relative path, file system bytes
    abs_path        BLOB NOT NULL,      -- where the file is (archived: its copy in archive_directory), bytes
    bucket          TEXT NOT NULL,
    key             TEXT,
    size            INTEGER,
    etag            TEXT,
    error           TEXT,               -- parked: why
    at              REAL NOT NULL,      -- wall clock of the move
    state           TEXT NOT NULL DEFAULT 'pending',  -- pending or given_up
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS hook_events_due ON hook_events(state, next_attempt_at);
"""
_SCHEMA = _FILES_TABLE.format(name="files") + """
CREATE UNIQUE INDEX IF NOT EXISTS files_key ON files(key);
CREATE INDEX IF NOT EXISTS files_dir ON files(dir);
CREATE INDEX IF NOT EXISTS files_state ON files(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS files_uploaded_at ON files(uploaded_at, path) WHERE state = 'uploaded';
CREATE INDEX IF NOT EXISTS files_uploaded_mtime ON files(mtime_ns, path) WHERE state = 'uploaded';
CREATE TABLE IF NOT EXISTS parts (
    path        BLOB NOT NULL,
    upload_id   TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    etag        TEXT NOT NULL,
    md5         TEXT NOT NULL,
    PRIMARY KEY (path, upload_id, part_number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS errors (
    id      INTEGER PRIMARY KEY,
    at      REAL NOT NULL,
    path    BLOB,
    kind    TEXT,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
""" + """
CREATE INDEX IF NOT EXISTS files_waiting ON files(discovered_at)
    WHERE state IN ('pending', 'uploading', 'failed', 'parked');
CREATE INDEX IF NOT EXISTS files_waiting_path ON files(path)
    WHERE state IN ('pending', 'uploading', 'failed', 'parked');
CREATE INDEX IF NOT EXISTS files_gone ON files(updated_at) WHERE state IN ('deleted', 'archived');
CREATE TABLE IF NOT EXISTS state_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS files_counted_insert AFTER INSERT ON files BEGIN
    INSERT INTO state_counts(state, n) VALUES(NEW.state, 1) ON CONFLICT(state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS files_counted_delete AFTER DELETE ON files BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
END;
CREATE TRIGGER IF NOT EXISTS files_counted_move AFTER UPDATE OF state ON files
    WHEN OLD.state IS NOT NEW.state BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
    INSERT INTO state_counts(state, n) VALUES(NEW.state, 1) ON CONFLICT(state) DO UPDATE SET n = n + 1;
END;
""" + _HOOK_EVENTS_TABLE
# the literal state lists of the partial indexes above: a query uses one only when its WHERE repeats it
_WAITING_SQL = "state IN ('pending', 'uploading', 'failed', 'parked')"
_GONE_SQL = "state IN ('deleted', 'archived')"
ERRORS_KEPT = 200
FORGET_BATCH = 5000  # rows forgotten per transaction: the store's lock is never held for long


class StoreError(Exception):
    """The state database cannot be used (corrupt, unwritable, full disk); the message says which."""


class IllegalTransition(Exception):
    """A state move the machine does not allow, or a row that was not in an allowed source state."""


def enc(rel: str) -> bytes:
    return os.fsencode(rel)


def dec(raw: bytes) -> str:
    return os.fsdecode(raw)


def display(rel: str) -> str:
    """``rel`` safe to print: undecodable bytes shown as backslash escapes."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Record(NamedTuple):
    """One file's row (a NamedTuple: rows are read by the thousand, and it builds four times faster
    than a frozen dataclass)."""

    rel: str
    key: Optional[str]  # None: parked because another row holds the key this file would get
    state: str
    size: int
    mtime_ns: int
    inode: int
    md5: Optional[str] = None
    etag: Optional[str] = None
    attempts: int = 0
    next_attempt_at: Optional[float] = None
    last_error: Optional[str] = None
    error_kind: Optional[str] = None
    discovered_at: float = 0.0
    updated_at: float = 0.0
    uploaded_at: Optional[float] = None
    upload_id: Optional[str] = None
    part_size: Optional[int] = None

    @property
    def signature(self) -> Signature:
        return Signature(self.size, self.mtime_ns, self.inode)


_COLUMNS = ("path, key, state, size, mtime_ns, inode, md5, etag, attempts, next_attempt_at, last_error, "
            "error_kind, discovered_at, updated_at, uploaded_at, upload_id, part_size")


def _record(row: Sequence[Any]) -> Record:
    return Record(dec(row[0]), *row[1:])


@dataclass(frozen=True)
class Part:
    number: int
    size: int
    etag: str
    md5: str


_INSERT_NEW = ("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, discovered_at, updated_at) "
               "VALUES(?, ?, ?, 'pending', ?, ?, ?, ?, ?) ON CONFLICT(path) DO NOTHING")


def collision_message(rel: str, key: str, holder: str, holder_state: str) -> str:
    """The one line that says why ``rel`` is parked: ``holder`` (in ``holder_state``) has ``key``."""
    gone = " (its local copy is gone: that object is its only copy)" if holder_state in ("deleted", "archived") \
        else ""
    return (f"{display(rel)} would go to S3 key {key}, which {display(holder)} already has{gone}; "
            f"parked (rename one of them)")


@contextlib.contextmanager
def _migration(conn: sqlite3.Connection, version: int) -> Iterator[None]:
    """One schema step in one transaction, ending at ``version``: all of it or none (a failure
    leaves the database as it was, and the next start tries again)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(version),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate_v1(conn: sqlite3.Connection, now: float) -> None:
    """Schema 1 -> 2, in one transaction, every row kept: ``key`` becomes nullable and UNIQUE.

    Schema 1 let two files share a key (the bug this fixes). Of the rows that share one, the row S3
    most likely holds the bytes of keeps it: the one uploaded last (the last PUT wins) among those
    uploaded, deleted or archived, else the one discovered first. Each other row loses its key:
    one still waiting or uploaded (its file is here and S3 may not hold its bytes) is parked for
    a collision, due at once, so the daemon gives it its own key under the current mapping or
    says which file holds it; a deleted or archived one (nothing left to send) just keeps no key.
    """
    with _migration(conn, 2):
        conn.execute(_FILES_TABLE.format(name="files_v2"))
        conn.execute(f"INSERT INTO files_v2({_ALL_COLUMNS}) SELECT {_ALL_COLUMNS} FROM files")
        shared = [k for (k,) in conn.execute("SELECT key FROM files_v2 GROUP BY key HAVING count(*) > 1")]
        for key in shared:
            rows = conn.execute("SELECT path, state, uploaded_at, discovered_at FROM files_v2 WHERE key = ?",
                                (key,)).fetchall()
            done = [r for r in rows if r[1] in DONE_STATES]
            holder = max(done, key=lambda r: (r[2] or 0.0, r[0])) if done else min(rows, key=lambda r: (r[3], r[0]))
            for path, state, _, _ in rows:
                if path == holder[0]:
                    continue
                message = collision_message(dec(path), key, dec(holder[0]), holder[1])
                if state in ("deleted", "archived"):
                    conn.execute("UPDATE files_v2 SET key = NULL WHERE path = ?", (path,))
                    continue
                conn.execute("UPDATE files_v2 SET key = NULL, state = 'parked', error_kind = 'collision', "
                             "last_error = ?, attempts = 0, next_attempt_at = ?, updated_at = ?, upload_id = NULL, "
                             "part_size = NULL WHERE path = ?", (message, now, now, path))
                conn.execute("DELETE FROM parts WHERE path = ?", (path,))
                log.error("%s", message)
        conn.execute("DROP TABLE files")
        conn.execute("ALTER TABLE files_v2 RENAME TO files")


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Schema 2 -> 3, in one transaction, every row kept: the indexes, ``state_counts`` and its
    triggers are added and the rows counted once (the last time anything counts them)."""
    with _migration(conn, 3):
        for statement in _statements(_SCHEMA):
            conn.execute(statement)
        _recount(conn)


def _migrate_v3(conn: sqlite3.Connection) -> None:
    """Schema 3 -> 4: the ``hook_events`` table (empty), in one transaction."""
    with _migration(conn, 4):
        for statement in _statements(_HOOK_EVENTS_TABLE):
            conn.execute(statement)


def _recount(conn: sqlite3.Connection) -> None:
    """Set ``state_counts`` from the rows themselves (inside the caller's transaction)."""
    conn.execute("DELETE FROM state_counts")
    conn.execute("INSERT INTO state_counts(state, n) SELECT state, count(*) FROM files GROUP BY state")


def _statements(script: str) -> Iterator[str]:
    """The statements of ``script`` one by one (executescript would commit the open transaction)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf
            buf = ""


_ALL_COLUMNS = ("path, dir, key, state, size, mtime_ns, inode, md5, etag, attempts, next_attempt_at, last_error, "
                "error_kind, discovered_at, updated_at, uploaded_at, upload_id, part_size")


class Store:
    """The state database. Thread-safe: one connection behind a lock, with group commit."""

    def __init__(self, path: Union[str, os.PathLike], commit_interval: float = 0.05,
                 clock: Callable[[], float] = time.time, readonly: bool = False):
        self.path = Path(path)
        self.clock = clock
        self.commit_interval = commit_interval
        self._lock = threading.RLock()
        self._dirty = False
        self._stop = threading.Event()
        self._written = threading.Event()  # set by every write: the committer sleeps until one comes
        self._committer: Optional[threading.Thread] = None
        self._broken: Optional[StoreError] = None  # set when a failure lost uncommitted writes
        # schema 3's state_counts and indexes exist (false only for a read-only look at an older schema)
        self._counted = True
        # hooks (events.EventLog): set by the daemon; records an event row in the transaction of the
        # move that causes it, only for the events a hook or the webhook is configured for
        self.events: Optional[Any] = None
        self._conn = self._open(readonly)

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
                self._counted = bool(conn.execute(
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
            if row is not None and int(row[0]) < 2:
                _migrate_v1(conn, self.clock())
            if row is not None and int(row[0]) < 3:
                _migrate_v2(conn)
            if row is not None and int(row[0]) < 4:
                _migrate_v3(conn)
            conn.executescript(_SCHEMA)
            if row is None:
                conn.execute("INSERT INTO meta(name, value) VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
            # a write that fires a trigger (every row write: state_counts) opens a statement journal,
            # a temp file by default, which doubled the cost of a row write; in memory it adds a
            # quarter. Other temp use stays small: every sort we run has a LIMIT (set after the
            # migrations, whose index builds sort every row)
            conn.execute("PRAGMA temp_store=MEMORY")
            return conn
        except sqlite3.DatabaseError as exc:
            raise StoreError(_explain(self.path, exc)) from None
        except OSError as exc:
            raise StoreError(f"State database {self.path} cannot be opened: {exc.strerror or exc}") from None

    def start(self) -> "Store":
        """Start the background committer (group commit)."""
        if self._committer is None:
            self._committer = threading.Thread(target=self._commit_loop, name="store-committer", daemon=True)
            self._committer.start()
        return self

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
        with self._lock:
            try:
                self._commit_locked()
            finally:
                self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transactions -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The open group-commit transaction (begun if there is none), under the lock, for one write
        step. A database error becomes StoreError (:meth:`_failed`); whatever happens, a transaction
        still open is left to the committer, which commits it at the next interval."""
        with self._lock:
            self._check_usable()
            had = self._conn.in_transaction
            try:
                if not had:
                    self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
            except sqlite3.DatabaseError as exc:
                raise self._failed(exc, had) from None
            finally:
                if self._conn.in_transaction:
                    self._dirtied()

    def _write(self, sql: str, params: Sequence[Any] = (), many: bool = False) -> sqlite3.Cursor:
        """Run one write (``many``: once per row of ``params``) in the open group-commit transaction."""
        with self._transaction() as conn:
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
        if self._broken is not None:
            raise StoreError(str(self._broken))

    def _failed(self, exc: sqlite3.DatabaseError, had_transaction: bool) -> StoreError:
        """The StoreError for ``exc``. If it cost the open transaction (SQLite rolls back on a full
        disk), every later write is refused: the rows written since the last commit are gone, and
        carrying on would act on them as if they were not (a new file's row, an upload's record).
        A restart re-derives them from the tree."""
        err = StoreError(_explain(self.path, exc))
        if had_transaction and not self._conn.in_transaction:
            self._broken = err
        return err

    def commit(self) -> None:
        """Make every write so far durable now. Raises StoreError when the disk refuses."""
        with self._lock:
            self._commit_locked()

    def _commit_locked(self) -> None:
        self._check_usable()
        if self._conn.in_transaction:
            try:
                self._conn.execute("COMMIT")
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
                    if self._broken is not None:
                        return  # every writer, and close(), now raise it: the daemon says it and stops
                    log.error("%s", exc)
                    self._written.set()  # nothing was lost: try again after the next interval

    def _read(self, sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise StoreError(_explain(self.path, exc)) from None

    @contextlib.contextmanager
    def connection(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, for a module that keeps its own table (events.py): with
        ``write``, inside the open group-commit transaction (durable with the next commit, or at
        once with :meth:`commit`). A database error becomes StoreError."""
        if write:
            with self._transaction() as conn:
                yield conn
            return
        with self._lock:
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:
                raise StoreError(_explain(self.path, exc)) from None

    def _event(self, event: str, raws: Sequence[bytes]) -> None:
        """Record ``event`` for the rows ``raws`` in the open transaction (the caller holds the lock
        since its move, so both are committed together)."""
        if not raws:
            return
        try:
            with self._transaction() as conn:
                assert self.events is not None
                self.events.record(conn, event, raws)
        except StoreError:
            raise
        except Exception:  # a bug in the hooks' bookkeeping never fails the move itself
            log.exception("Hooks: could not record the %s event of %d file(s); the move stands", event, len(raws))

    # -- reading ----------------------------------------------------------------------------------
    def get(self, rel: str) -> Optional[Record]:
        rows = self._read(f"SELECT {_COLUMNS} FROM files WHERE path = ?", (enc(rel),))
        return _record(rows[0]) if rows else None

    def _row(self, rel: str) -> Record:
        """The row of ``rel``, which the caller has just written (under the lock)."""
        rec = self.get(rel)
        assert rec is not None, rel
        return rec

    def get_many(self, rels: Sequence[str]) -> Dict[str, Record]:
        """The rows of ``rels`` that exist, by relative path (one query per 500)."""
        out: Dict[str, Record] = {}
        for i in range(0, len(rels), 500):  # stay under SQLite's bound-variable limit
            raws = [enc(r) for r in rels[i:i + 500]]
            for row in self._read(f"SELECT {_COLUMNS} FROM files WHERE path IN ({','.join('?' * len(raws))})", raws):
                rec = _record(row)
                out[rec.rel] = rec
        return out

    def in_dir(self, rel_dir: str) -> Dict[str, Record]:
        """Every row whose file lives directly in folder ``rel_dir``, by relative path."""
        rows = self._read(f"SELECT {_COLUMNS} FROM files WHERE dir = ?", (enc(rel_dir),))
        return {r.rel: r for r in map(_record, rows)}

    def signatures_of(self, rels: Sequence[str]) -> Dict[str, Tuple[str, int, int, int]]:
        """(state, size, mtime_ns, inode) of the rows of ``rels`` that exist: the rescan's hot path."""
        out: Dict[str, Tuple[str, int, int, int]] = {}
        for i in range(0, len(rels), 500):  # stay under SQLite's bound-variable limit
            chunk = rels[i:i + 500]
            raws = [enc(r) for r in chunk]
            q = ",".join("?" * len(raws))
            found = {r[0]: r[1:] for r in self._read(
                f"SELECT path, state, size, mtime_ns, inode FROM files WHERE path IN ({q})", raws)}
            if found:
                for rel, raw in zip(chunk, raws):
                    sig = found.get(raw)
                    if sig is not None:
                        out[rel] = sig
        return out

    def in_states(self, states: Sequence[str], after: bytes = b"", limit: int = 1000) -> List[Record]:
        """Rows in any of ``states``, in path order after ``after`` (for paging through many)."""
        if set(states) == set(WAITING_STATES) and self._counted:
            # every rescan pages through the waiting rows: through files_state each page sorted every
            # one of them (a backlog of 100,000 took 5 s a sweep, growing with its square)
            rows = self._read(f"SELECT {_COLUMNS} FROM files INDEXED BY files_waiting_path WHERE {_WAITING_SQL} "
                              "AND path > ? ORDER BY path LIMIT ?", (after, limit))
            return [_record(r) for r in rows]
        q = ",".join("?" * len(states))
        rows = self._read(f"SELECT {_COLUMNS} FROM files WHERE state IN ({q}) AND path > ? ORDER BY path LIMIT ?",
                          (*states, after, limit))
        return [_record(r) for r in rows]

    def due_retries(self, now: float, limit: int, horizon: Optional[float] = None) -> List[Record]:
        """Failed or parked rows whose next attempt is due, soonest first; with ``horizon``, also rows
        scheduled more than ``horizon`` seconds ahead, further than any delay the daemon sets: the
        wall clock was ahead when they were scheduled and has gone back since (a box that booted
        with a wrong clock, then NTP), and they would otherwise wait, unseen, until it catches up."""
        rows = self._read(f"SELECT {_COLUMNS} FROM files WHERE state IN ('failed', 'parked') "
                          "AND next_attempt_at IS NOT NULL AND next_attempt_at <= ? "
                          "ORDER BY next_attempt_at LIMIT ?", (now, limit))
        if horizon is not None and len(rows) < limit:
            rows += self._read(f"SELECT {_COLUMNS} FROM files WHERE state IN ('failed', 'parked') "
                               "AND next_attempt_at > ? ORDER BY next_attempt_at DESC LIMIT ?",
                               (now + horizon, limit - len(rows)))
        return [_record(r) for r in rows]

    def uploaded_page(self, order: str, after: Optional[Tuple[Optional[float], bytes]] = None, limit: int = 1000,
                      uploaded_before: Optional[float] = None) -> List[Record]:
        """Uploaded rows (cleanup's candidates), oldest first by ``order`` (``uploaded_at`` or
        ``mtime_ns``, ties by path), strictly after the cursor ``after`` = (value, path bytes);
        with ``uploaded_before``, only rows uploaded at or before that wall-clock time."""
        if order not in ("uploaded_at", "mtime_ns"):
            raise ValueError(f"cannot order uploaded rows by {order!r}")
        where, params = ["state = 'uploaded'"], []  # literal, so the partial indexes apply
        if after is not None:
            where.append(f"({order}, path) > (?, ?)")
            params += [after[0], after[1]]
        if uploaded_before is not None:
            where.append("uploaded_at <= ?")
            params.append(uploaded_before)
        rows = self._read(f"SELECT {_COLUMNS} FROM files WHERE {' AND '.join(where)} ORDER BY {order}, path LIMIT ?",
                          (*params, limit))
        return [_record(r) for r in rows]

    def next_retry_at(self) -> Optional[float]:
        rows = self._read("SELECT min(next_attempt_at) FROM files WHERE state IN ('failed', 'parked')")
        return rows[0][0] if rows else None

    def counts(self) -> Dict[str, int]:
        """Rows per state (every state present, 0 if none). Reads ``state_counts``, which triggers keep
        exact, so it costs the same at a million rows as at ten."""
        out = {s: 0 for s in STATES}
        sql = "SELECT state, n FROM state_counts" if self._counted else \
            "SELECT state, count(*) FROM files GROUP BY state"
        for state, n in self._read(sql):
            if n:
                out[state] = n
        return out

    def oldest_waiting(self) -> Optional[Record]:
        """The waiting row discovered first (None: every file found is in S3); one index look-up."""
        # INDEXED BY: without it the planner picks files_state and sorts every waiting row
        table = "files INDEXED BY files_waiting" if self._counted else "files"
        rows = self._read(f"SELECT {_COLUMNS} FROM {table} WHERE {_WAITING_SQL} ORDER BY discovered_at LIMIT 1")
        return _record(rows[0]) if rows else None

    def last_errors(self, n: int = 10) -> List[Tuple[float, Optional[str], Optional[str], str]]:
        rows = self._read("SELECT at, path, kind, message FROM errors ORDER BY id DESC LIMIT ?", (n,))
        return [(at, dec(p) if p is not None else None, kind, msg) for at, p, kind, msg in rows]

    def meta(self, name: str, default: Optional[str] = None) -> Optional[str]:
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else default

    # -- writing: the state machine ---------------------------------------------------------------
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
        now = self.clock()
        raw = enc(rel)
        with self._lock:
            old = self.get(rel)
            if old is None:
                if not self._collided(rel, key, size, mtime_ns, inode, now, retry_at, None):
                    self._write("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, discovered_at, "
                                "updated_at) VALUES(?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                                (raw, enc(_parent(rel)), key, size, mtime_ns, inode, now, now))
                return self._row(rel)
            if old.state == "uploading":
                # a worker is sending it: the worker's re-check finds the change and requeues it (a
                # scan that moved it back to pending here made the worker's finish an illegal move)
                return old
            new_key = old.key
            if old.key is None or (old.state in DONE_STATES
                                   and is_new_version(old.state, old.signature, (size, mtime_ns, inode))):
                new_key = key  # another version (or one that never had a key): its own key, decided now
                if self._collided(rel, key, size, mtime_ns, inode, now, retry_at, old):
                    return self._row(rel)
            if old.state != "pending":
                self._move(rel, "pending", key=new_key)
            if old.signature != (size, mtime_ns, inode):
                # parts sent from another version of the file must never be completed with this
                # one's: forget them, and leave the open upload (if any) without a part size, so
                # the uploader aborts it and starts afresh (servers such as rclone refuse to
                # replace a part with different bytes)
                self._write("DELETE FROM parts WHERE path = ?", (raw,))
                self._write("UPDATE files SET part_size = NULL WHERE path = ?", (raw,))
            self._write("UPDATE files SET size=?, mtime_ns=?, inode=?, attempts=0, next_attempt_at=NULL, "
                        "last_error=NULL, error_kind=NULL, updated_at=?, discovered_at=? WHERE path=?",
                        (size, mtime_ns, inode, now, now if old.state in DONE_STATES else old.discovered_at,
                         raw))
            return self._row(rel)

    def _collided(self, rel: str, key: str, size: int, mtime_ns: int, inode: int, now: float,
                  retry_at: Optional[float], old: Optional[Record]) -> bool:
        """If another row holds ``key``: write ``rel``'s row (new, or ``old``) parked without a key,
        and return True. Called under the lock."""
        rows = self._read("SELECT path, state FROM files WHERE key = ? AND path != ?", (key, enc(rel)))
        if not rows:
            return False
        message = collision_message(rel, key, dec(rows[0][0]), rows[0][1])
        raw = enc(rel)
        if old is None:
            self._write("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, next_attempt_at, last_error, "
                        "error_kind, discovered_at, updated_at) VALUES(?, ?, NULL, 'parked', ?, ?, ?, ?, ?, "
                        "'collision', ?, ?)", (raw, enc(_parent(rel)), size, mtime_ns, inode, retry_at, message,
                                               now, now))
            if self.events is not None and self.events.wanted("parked"):  # hooks (a moved row: in _move)
                self._event("parked", [raw])
        else:
            # without a key it has no upload to resume (one left open is aborted at start-up as
            # owned by no file)
            self._write("DELETE FROM parts WHERE path = ?", (raw,))
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
        now = self.clock()
        params = [(enc(r), enc(_parent(r)), k, s, m, i, now, now) for r, k, s, m, i in rows]
        with self._transaction() as conn:
            try:
                # ON CONFLICT(path), not OR IGNORE: OR IGNORE would also skip, silently, a file
                # whose key another row holds (a lost file); that one raises here instead
                conn.executemany(_INSERT_NEW, params)
                return []
            except sqlite3.IntegrityError:
                return self._discover_one_by_one(rows, now, retry_at)

    def _discover_one_by_one(self, rows: Sequence[Tuple[str, str, int, int, int]], now: float,
                             retry_at: Optional[float]) -> List[Record]:
        """discover_many's slow path, once a key of the batch was found taken (the rows inserted
        before that one are kept: a failed statement takes back only itself)."""
        collided: List[Record] = []
        for rel, key, size, mtime_ns, inode in rows:
            if self._read("SELECT 1 FROM files WHERE path = ?", (enc(rel),)):
                continue
            if self._collided(rel, key, size, mtime_ns, inode, now, retry_at, None):
                collided.append(self._row(rel))
            else:
                self._conn.execute(_INSERT_NEW, (enc(rel), enc(_parent(rel)), key, size, mtime_ns, inode, now, now))
        return collided

    def start_upload(self, rel: str, size: int, mtime_ns: int, inode: int) -> None:
        """pending/failed/parked -> uploading, with the signature of the version about to be read."""
        self._move(rel, "uploading", size=size, mtime_ns=mtime_ns, inode=inode)

    def finish_upload(self, rel: str, size: int, mtime_ns: int, inode: int, md5: Optional[str],
                      etag: Optional[str]) -> None:
        """uploading -> uploaded: S3 confirmed the object and the file did not change while read.
        The parts recorded for its multipart upload (if any) are forgotten with it."""
        now = self.clock()
        with self._lock:
            self._move(rel, "uploaded", size=size, mtime_ns=mtime_ns, inode=inode, md5=md5, etag=etag,
                       uploaded_at=now, attempts=0, next_attempt_at=None, last_error=None, error_kind=None,
                       upload_id=None, part_size=None)
            self._write("DELETE FROM parts WHERE path = ?", (enc(rel),))

    def record_sent(self, rows: Sequence[Tuple[str, int, int, int, str, str]]) -> List[bool]:
        """The one-step move to uploaded of single PUTs the asyncio sender sent: (rel, size, mtime_ns,
        inode, md5, etag) each, for rows still waiting (pending, failed or parked) *with that
        signature* (a row that describes another version, or has moved on, is left as it is).
        Returns, per row, whether it moved."""
        now = self.clock()
        marks = ",".join("?" * len(ONE_STEP_SOURCES))
        sql = ("UPDATE files SET state = 'uploaded', updated_at = ?, md5 = ?, etag = ?, uploaded_at = ?, "
               "attempts = 0, next_attempt_at = NULL, last_error = NULL, error_kind = NULL, upload_id = NULL, "
               f"part_size = NULL WHERE path = ? AND state IN ({marks}) AND size = ? AND mtime_ns = ? AND inode = ? "
               "AND key IS NOT NULL")
        params = [(now, md5, etag, now, enc(r), *ONE_STEP_SOURCES, s, m, i) for r, s, m, i, md5, etag in rows]
        if self.events is None or not self.events.wanted("uploaded"):
            return self._moves(sql, params)
        with self._lock:  # hooks: the events in the transaction of the moves
            moved = self._moves(sql, params)
            self._event("uploaded", [p[4] for p, m in zip(params, moved) if m])
            return moved

    @staticmethod
    def _move_sql(dst: str, fields: Sequence[str]) -> Tuple[str, Tuple[str, ...]]:
        sources = SOURCES[dst]
        sets = ", ".join(["state = ?", "updated_at = ?"] + [f"{k} = ?" for k in fields])
        return f"UPDATE files SET {sets} WHERE path = ? AND state IN ({','.join('?' * len(sources))})", sources

    def _moves(self, sql: str, params: Sequence[Sequence[Any]]) -> List[bool]:
        """Run the guarded move ``sql`` once per row in the open transaction; which rows moved."""
        out = []
        with self._transaction() as conn:
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
        with self._lock:
            rec = self.get(rel)
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
        sql, sources = self._move_sql(state, ())
        sql = sql.replace("WHERE path = ?", "WHERE size = ? AND mtime_ns = ? AND inode = ? AND path = ?")
        with self._lock:
            if self._write(sql, (state, self.clock(), *signature, enc(rel), *sources)).rowcount != 1:
                raise IllegalTransition(f"{display(rel)}: its row no longer describes the version removed")
            if self.events is not None and self.events.wanted(state):  # hooks: in the move's transaction
                self._event(state, [enc(rel)])

    def locked(self) -> Any:
        """The store's lock, for a caller that must act on a row with no write in between (cleanup's
        unlink of the file a row records). Hold it briefly."""
        return self._lock

    def forget(self, rel: str) -> None:
        """Drop the row of a file that vanished before it was uploaded (nothing to send any more)."""
        raw = enc(rel)
        self._write("DELETE FROM parts WHERE path = ?", (raw,))
        self._write("DELETE FROM files WHERE path = ? AND state IN ('pending', 'failed', 'parked', 'uploading')",
                    (raw,))

    def forget_uploaded(self, rel: str, size: int, mtime_ns: int, inode: int) -> bool:
        """Drop the uploaded row of a file that is gone and that S3 does not prove (cleanup), only if
        the row is still uploaded with that signature: a row that has moved on meanwhile (a new file
        at the path, in flight) is left as it is. Returns whether it was dropped."""
        raw = enc(rel)
        with self._lock:
            cur = self._write("DELETE FROM files WHERE path = ? AND state = 'uploaded' AND size = ? AND mtime_ns = ? "
                              "AND inode = ?", (raw, size, mtime_ns, inode))
            if cur.rowcount != 1:
                return False
            self._write("DELETE FROM parts WHERE path = ?", (raw,))
            return True

    def park_new(self, rel: str, size: int, mtime_ns: int, inode: int, kind: str, message: str,
                 retry_at: Optional[float]) -> bool:
        """Record a file that has no row yet as parked without a key, with ``kind`` and ``message``,
        due again at ``retry_at`` (a file whose handling hit a bug before it got its row: it is shown
        by ``status`` instead of being silently missing). Returns False when a row exists already."""
        now = self.clock()
        cur = self._write("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, next_attempt_at, "
                          "last_error, error_kind, discovered_at, updated_at) "
                          "VALUES(?, ?, NULL, 'parked', ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO NOTHING",
                          (enc(rel), enc(_parent(rel)), size, mtime_ns, inode, retry_at, message, kind, now, now))
        if cur.rowcount != 1:
            return False
        self.add_error(rel, kind, message)
        return True

    def recover_interrupted(self) -> int:
        """At start-up: uploads that were in flight when the last run stopped go back to pending
        (an open multipart upload id is kept, so it resumes). Returns how many."""
        cur = self._write("UPDATE files SET state = 'pending', updated_at = ? WHERE state = 'uploading'",
                          (self.clock(),))
        return cur.rowcount

    def retry_parked(self, now: Optional[float] = None) -> int:
        """Make every parked and failed file due now (the ``retry`` command). Returns how many."""
        cur = self._write("UPDATE files SET next_attempt_at = ?, attempts = 0 WHERE state IN ('parked', 'failed')",
                          (self.clock() if now is None else now,))
        return cur.rowcount

    def _move(self, rel: str, dst: str, **fields: Any) -> None:
        sql, sources = self._move_sql(dst, tuple(fields))
        with self._lock:
            # hooks: an event when a hook wants it, in the move's transaction (parked again: none)
            hook = self.events is not None and self.events.wanted(dst) and (
                dst != "parked" or not self._read("SELECT 1 FROM files WHERE path = ? AND state = 'parked'",
                                                  (enc(rel),)))
            cur = self._write(sql, (dst, self.clock(), *fields.values(), enc(rel), *sources))
            if cur.rowcount != 1:
                rec = self.get(rel)
                have = rec.state if rec else "no row"
                raise IllegalTransition(f"{display(rel)}: cannot move {have} -> {dst}")
            if hook:
                self._event(dst, [enc(rel)])

    def forget_done(self, before: float, limit: int = FORGET_BATCH) -> int:
        """Drop up to ``limit`` rows deleted or archived (moved there: ``updated_at``) before wall time
        ``before``, oldest first, in one transaction, committed; returns how many (fewer than
        ``limit``: none are left). Also drops parts no open upload owns. Callers loop until done,
        so the lock is taken for one batch at a time.

        A forgotten row no longer holds its key: a file elsewhere in the tree that would go to that
        key (only a changed prefix can make one) is then uploaded over the object, whose only copy
        was in S3 (``forget_after`` in the README says so).
        """
        with self._lock:
            cur = self._write(f"DELETE FROM files WHERE path IN (SELECT path FROM files INDEXED BY files_gone WHERE {_GONE_SQL} "
                              "AND updated_at < ? ORDER BY updated_at LIMIT ?)", (before, limit))
            n = cur.rowcount
            if n < limit:  # the last batch: parts left by an upload id since replaced (never read again)
                self._write("DELETE FROM parts WHERE NOT EXISTS (SELECT 1 FROM files WHERE files.path = parts.path "
                            "AND files.upload_id = parts.upload_id)")
            self._commit_locked()
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
            page = self.uploaded_page("uploaded_at", cursor, limit, uploaded_before=before)
            if not page:
                break
            cursor = (page[-1].uploaded_at, enc(page[-1].rel))
            vanished = [(enc(r.rel),) for r in page if gone(r.rel)]
            if vanished:
                cur = self._write("DELETE FROM files WHERE path = ? AND state = 'uploaded'", vanished, many=True)
                total += max(cur.rowcount, 0)
            if len(page) < limit:
                break
        return total

    def add_error(self, rel: Optional[str], kind: str, message: str) -> None:
        cur = self._write("INSERT INTO errors(at, path, kind, message) VALUES(?, ?, ?, ?)",
                          (self.clock(), enc(rel) if rel is not None else None, kind, message))
        if cur.lastrowid and cur.lastrowid % 50 == 0:
            self._write("DELETE FROM errors WHERE id <= ?", (cur.lastrowid - ERRORS_KEPT,))

    def set_meta(self, name: str, value: str) -> None:
        self._write("INSERT INTO meta(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                    (name, value))

    def add_to_meta_counter(self, name: str, amount: int) -> None:
        self._write("INSERT INTO meta(name, value) VALUES(?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = CAST(value AS INTEGER) + ?", (name, str(amount), amount))

    # -- multipart bookkeeping ----------------------------------------------------------------------
    def set_multipart(self, rel: str, upload_id: Optional[str], part_size: Optional[int]) -> None:
        raw = enc(rel)
        if upload_id is None:
            self._write("DELETE FROM parts WHERE path = ?", (raw,))
        self._write("UPDATE files SET upload_id = ?, part_size = ? WHERE path = ?", (upload_id, part_size, raw))

    def add_part(self, rel: str, upload_id: str, part: Part) -> None:
        self._write("INSERT OR REPLACE INTO parts(path, upload_id, part_number, size, etag, md5) "
                    "VALUES(?, ?, ?, ?, ?, ?)", (enc(rel), upload_id, part.number, part.size, part.etag, part.md5))

    def parts(self, rel: str, upload_id: str) -> Dict[int, Part]:
        rows = self._read("SELECT part_number, size, etag, md5 FROM parts WHERE path = ? AND upload_id = ?",
                          (enc(rel), upload_id))
        return {n: Part(n, s, e, m) for n, s, e, m in rows}

    def owned_upload_ids(self) -> Dict[str, str]:
        """upload id -> S3 key of every multipart upload a row still owns."""
        return {uid: key for uid, key in self._read("SELECT upload_id, key FROM files WHERE upload_id IS NOT NULL")}

    def has_key(self, key: str) -> bool:
        """Whether any row's file goes to S3 key ``key``."""
        return bool(self._read("SELECT 1 FROM files WHERE key = ? LIMIT 1", (key,)))

    def key_holder(self, key: str) -> Optional[str]:
        """The relative path of the row that has S3 key ``key`` (None when no row has it)."""
        rows = self._read("SELECT path FROM files WHERE key = ?", (key,))
        return dec(rows[0][0]) if rows else None

    def iter_all(self, batch: int = 1000) -> Iterator[Record]:
        after = b""
        while True:
            rows = self._read(f"SELECT {_COLUMNS} FROM files WHERE path > ? ORDER BY path LIMIT ?", (after, batch))
            if not rows:
                return
            for r in rows:
                yield _record(r)
            after = rows[-1][0]

    def rebase_destination(self, meta_name: str, meta_value: str, key_for: Callable[[str, int], str],
                           present: Callable[[str], bool]) -> "Rebased":
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
          parked without a key as a collision (as :meth:`discover` parks one), reported in
          ``clashes``; a row parked as a collision already whose new key is taken stays so;
        - ``deleted``/``archived`` rows, and ``uploaded`` rows whose file is gone, stay as they are:
          there is nothing left to send.

        Returns :class:`Rebased`. Raises StoreError when the database refuses (nothing changed).
        """
        now = self.clock()
        resent = waiting = 0
        clashes: List[Tuple[bytes, str, str]] = []
        states = ("uploaded",) + WAITING_STATES
        rebase_sql = ("UPDATE files SET {key}state = 'pending', md5 = NULL, etag = NULL, uploaded_at = NULL, "
                      "attempts = 0, next_attempt_at = NULL, last_error = NULL, error_kind = NULL, upload_id = NULL, "
                      "part_size = NULL, updated_at = ?, discovered_at = coalesce(?, discovered_at) WHERE path = ?")
        with self._lock:
            self._commit_locked()  # the transaction below holds this change alone: all of it or none
            conn = self._conn
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
                    raise StoreError(_explain(self.path, exc)) from None
                raise
        return Rebased(resent, waiting, [(dec(raw), old, new) for raw, old, new in clashes])

    def _rekey(self, raw: bytes, key: str) -> bool:
        """Give row ``raw`` the key ``key`` in the open transaction; False when another row holds it
        (only a constraint refuses it, and only this statement is undone)."""
        try:
            self._conn.execute("UPDATE files SET key = ? WHERE path = ?", (key, raw))
            return True
        except sqlite3.IntegrityError:
            return False


class Rebased(NamedTuple):
    """What :meth:`Store.rebase_destination` changed: ``resent`` uploaded rows went back to pending,
    ``waiting`` rows were rebased, ``clashes`` (rel, old key, key refused) were parked as collisions."""

    resent: int
    waiting: int
    clashes: List[Tuple[str, str, str]]


class DatabaseClaim:
    """One daemon (``run`` or ``once``) per state database at a time, held by a lock on the file
    ``<db_path>.lock`` (flock; an exclusive byte lock on Windows) that the operating system drops
    when the process ends, ``kill -9`` included. Two daemons on one database would each act on
    rows the other is moving (a manual ``once`` finishing a running pass's cleanup, say), so the
    second is refused with one line naming the first one's pid. ``status`` and ``check`` read
    without it."""

    def __init__(self, db_path: Union[str, os.PathLike]):
        self.path = Path(str(db_path) + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a+")
        except OSError as exc:
            raise StoreError(f"State database lock {self.path} cannot be opened: {exc.strerror or exc}") from None
        try:
            if sys.platform == "win32":  # not os.name == "nt": the same test, but one mypy's --platform follows
                import msvcrt
                self._file.seek(0)
                msvcrt.locking(self._file.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                self._file.seek(0)
                holder = self._file.read().strip() or "?"
            except OSError:  # Windows: the holder's locked byte cannot be read
                holder = "?"
            self._file.close()
            raise StoreError(f"State database {db_path} is in use by another s3-uploader (pid {holder}); one "
                             f"process per database: stop that one, or give this one its own db_path") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # the lock goes with the descriptor


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def _explain(path: Path, exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "full" in text:
        return f"State database {path}: the disk is full ({text}); free space, nothing was lost"
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (f"State database {path} is corrupt ({text}); move it aside to start a new one (files already "
                f"in S3 will be checked and not lost, but may be uploaded again)")
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return f"State database {path} cannot be written ({text}); check the folder's permissions"
    return f"State database {path}: {text}"

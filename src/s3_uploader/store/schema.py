"""The state database's schema: its tables, indexes and triggers, and the migrations from every
older schema, each in one transaction.

No two rows ever hold the same S3 key: ``key`` has a UNIQUE index, so the database itself refuses a
second file at an object another file already has (cleanup could otherwise prove one file, delete
it, and let the other be uploaded over its only copy). A file whose key another row holds gets a
row *without* a key, parked as a collision; a CHECK keeps a keyless row out of every state but
parked, deleted and archived.

``state_counts`` holds the number of rows per state, kept by triggers on ``files`` (every insert,
state move and delete, by any caller: the database keeps it, no caller can forget to). A migration
that rebuilds ``files`` must recount (:func:`_recount`): dropping the table drops its triggers.
"""
from __future__ import annotations

import contextlib
import logging
import sqlite3
from typing import Iterator, Optional

from .machine import DONE_STATES
from .rows import collision_message, dec

log = logging.getLogger(__name__)

# 2: key UNIQUE, NULL while parked for a collision (1 let two rows share a key)
# 3: rows per state kept by triggers (state_counts); partial indexes for the oldest waiting row, for
#    paging through the waiting rows, and for forgetting rows deleted or archived long ago
# 4 (history): per-minute counters of the status page's charts (table history_minutes, see history.py)
# 5 (hooks): hook_events, the hooks' and webhook's deliveries still to make (events.py), written in the
#    transaction of the move that caused them
# 6 (checksum): files.checksum, the checksum S3 answered it stores with the object (cleanup compares it)
# 7 (order): files.rank, the file's priority rank (order.py), and a partial index of the pending rows in
#    upload order (rank, mtime_ns, path): the backlog is paged through it
SCHEMA_VERSION = 7
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
    checksum        TEXT,               -- ALGORITHM:TYPE:value S3 answered it stores (remote.stored_checksum);
                                        -- NULL when none was sent or answered
    rank            INTEGER NOT NULL DEFAULT 0,  -- index of the first [upload] priority pattern it matches
                                        -- (the number of patterns: none); set when discovered, and for every
                                        -- waiting row when the patterns change (Moves.rerank)
    CHECK (key IS NOT NULL OR state IN ('parked', 'deleted', 'archived'))  -- keyless: never sent
) WITHOUT ROWID;
"""
SCHEMA = _FILES_TABLE.format(name="files") + """
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
"""
# schema 4 (history): one row per minute the daemon ran; written and read only by history.py
HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS history_minutes (
    minute   INTEGER PRIMARY KEY,  -- wall clock, Unix seconds, a multiple of 60: the minute's start
    files    INTEGER NOT NULL,     -- files uploaded in it
    bytes    INTEGER NOT NULL,     -- bytes uploaded in it
    failures INTEGER NOT NULL,     -- failed upload attempts in it
    backlog  INTEGER NOT NULL      -- files not yet in S3 at its end
);
"""
SCHEMA += HISTORY_SCHEMA
# schema 5 (hooks): one row per event and target (command or webhook); a delivered row is deleted
# (counted in meta), a given-up one kept until pruned; events.py owns every statement on it
HOOK_EVENTS_SCHEMA = """
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
SCHEMA += HOOK_EVENTS_SCHEMA
# schema 7 (order): the backlog in upload order. Apart from SCHEMA because migrations from schema 2
# create SCHEMA's indexes on a table that has no ``rank`` yet; :func:`migrate` creates it last.
BACKLOG_SCHEMA = """
CREATE INDEX IF NOT EXISTS files_backlog ON files(rank, mtime_ns, path) WHERE state = 'pending';
"""
# the literal state lists of the partial indexes above: a query uses one only when its WHERE repeats it
WAITING_SQL = "state IN ('pending', 'uploading', 'failed', 'parked')"
GONE_SQL = "state IN ('deleted', 'archived')"


def migrate(conn: sqlite3.Connection, found: Optional[int], now: float) -> None:
    """Bring the database (schema ``found``, None when new) to :data:`SCHEMA_VERSION`: each older
    schema's step in its own transaction, then the current DDL (every statement a no-op on a
    database that has it)."""
    if found is not None and found < 2:
        _migrate_v1(conn, now)
    if found is not None and found < 3:
        _migrate_v2(conn)
    if found is not None and found < 4:
        _migrate_v3_history(conn)
    if found is not None and found < 5:
        _migrate_v4_hooks(conn)
    if found is not None and found < 6:
        _migrate_v5_checksum(conn)
    if found is not None and found < 7:
        _migrate_v6_rank(conn)
    conn.executescript(SCHEMA + BACKLOG_SCHEMA)
    if found is None:
        conn.execute("INSERT INTO meta(name, value) VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))


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
        for statement in _statements(SCHEMA):
            conn.execute(statement)
        _recount(conn)


def _migrate_v3_history(conn: sqlite3.Connection) -> None:
    """Schema 3 -> 4 (history): the per-minute table of the status page's charts, empty."""
    with _migration(conn, 4):
        for statement in _statements(HISTORY_SCHEMA):
            conn.execute(statement)


def _migrate_v4_hooks(conn: sqlite3.Connection) -> None:
    """Schema 4 -> 5 (hooks): the ``hook_events`` table, empty."""
    with _migration(conn, 5):
        for statement in _statements(HOOK_EVENTS_SCHEMA):
            conn.execute(statement)


def _migrate_v5_checksum(conn: sqlite3.Connection) -> None:
    """Schema 5 -> 6 (checksum): ``files.checksum``, NULL in every row kept (nothing recorded one:
    cleanup proves them as before). A table rebuilt from schema 1 by this start has it already."""
    with _migration(conn, 6):
        if "checksum" not in {row[1] for row in conn.execute("PRAGMA table_info(files)")}:
            conn.execute("ALTER TABLE files ADD COLUMN checksum TEXT")


def _migrate_v6_rank(conn: sqlite3.Connection) -> None:
    """Schema 6 -> 7 (order): ``files.rank``, 0 in every row kept, and the backlog's index. The
    waiting rows get the rank of the configured priority at the daemon's first scan (``Moves.rerank``).
    A table rebuilt from schema 1 by this start has the column already."""
    with _migration(conn, 7):
        if "rank" not in {row[1] for row in conn.execute("PRAGMA table_info(files)")}:
            conn.execute("ALTER TABLE files ADD COLUMN rank INTEGER NOT NULL DEFAULT 0")
        for statement in _statements(BACKLOG_SCHEMA):
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

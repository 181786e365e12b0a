"""The SQLite state machine: legal moves, illegal ones refused, durability across reopen, keys no two
rows share, counts kept exact by triggers, and old rows forgotten at a cost that does not grow."""
from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import pytest
from helpers import Clock, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3_uploader.status import status_data
from s3_uploader.config import ConfigError, parse_config
from s3_uploader.daemon import Daemon
from s3_uploader.store import (SCHEMA_VERSION, SOURCES, STATES, TRANSITIONS, WAITING_STATES, IllegalTransition, Part,
                               Store, StoreError)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state.db", clock=Clock())
    yield s
    s.close()


def test_the_happy_path_pending_uploading_uploaded(store):
    store.discover_many([("cam/a.mp4", "pre/cam/a.mp4", 10, 111, 7)])
    assert store.get("cam/a.mp4").state == "pending"
    store.start_upload("cam/a.mp4", 10, 111, 7)
    store.finish_upload("cam/a.mp4", 10, 111, 7, "md5hex", "md5hex")
    r = store.get("cam/a.mp4")
    assert (r.state, r.key, r.md5, r.uploaded_at) == ("uploaded", "pre/cam/a.mp4", "md5hex", 1000.0)
    assert store.counts()["uploaded"] == 1


def test_illegal_moves_raise_and_change_nothing(store):
    store.discover_many([("a", "a", 1, 1, 1)])
    with pytest.raises(IllegalTransition):
        store.finish_upload("a", 1, 1, 1, None, None)  # pending -> uploaded skips uploading
    with pytest.raises(IllegalTransition):
        store.mark_removed("a", "deleted")  # never delete what is not uploaded
    assert store.get("a").state == "pending"


def test_a_single_put_is_recorded_in_one_step_only_from_waiting_and_only_for_the_version_sent(store):
    store.discover_many([(n, n, 1, 1, 1) for n in ("pending", "failed", "parked", "uploading", "other")])
    store.start_upload("failed", 1, 1, 1)
    store.fail_upload("failed", "network", "reset", 1001.0, park=False)
    store.start_upload("parked", 1, 1, 1)
    store.fail_upload("parked", "auth", "denied", None, park=True)
    store.start_upload("uploading", 1, 1, 1)
    moved = store.record_sent([(n, 1, 1, 1, "m" * 32, "m" * 32) for n in ("pending", "failed", "parked", "uploading")]
                              + [("other", 1, 2, 1, "m" * 32, "m" * 32), ("nobody", 1, 1, 1, "m", "m")])
    assert moved == [True, True, True, False, False, False]
    for n in ("pending", "failed", "parked"):
        r = store.get(n)
        assert (r.state, r.md5, r.etag, r.attempts, r.last_error, r.uploaded_at) == ("uploaded", "m" * 32, "m" * 32,
                                                                                      0, None, 1000.0)
    assert store.get("uploading").state == "uploading"  # a worker's: finish_upload records it
    assert (store.get("other").state, store.get("other").mtime_ns) == ("pending", 1)  # another version
    assert store.record_sent([("pending", 1, 1, 1, "n" * 32, "n" * 32)]) == [False]  # recorded once
    assert store.get("pending").md5 == "m" * 32


def test_every_declared_move_has_its_source_listed():
    for src, dsts in TRANSITIONS.items():
        for dst in dsts:
            assert src in SOURCES[dst]


def test_failure_counts_attempts_and_records_the_error(store):
    store.discover_many([("a", "a", 1, 1, 1)])
    store.start_upload("a", 1, 1, 1)
    assert store.fail_upload("a", "throttled", "SlowDown", 1005.0, park=False) == 1
    store.start_upload("a", 1, 1, 1)
    assert store.fail_upload("a", "throttled", "SlowDown", 1010.0, park=True) == 2
    r = store.get("a")
    assert (r.state, r.attempts, r.last_error, r.error_kind) == ("parked", 2, "SlowDown", "throttled")
    assert [e[3] for e in store.last_errors()] == ["SlowDown", "SlowDown"]
    assert store.due_retries(1009.0, 10) == []
    assert [r.rel for r in store.due_retries(1010.0, 10)] == ["a"]


def test_a_changed_uploaded_file_goes_back_to_pending_with_the_key_of_its_new_version(store):
    store.discover_many([("a", "k/a", 1, 1, 1)])
    store.start_upload("a", 1, 1, 1)
    store.finish_upload("a", 1, 1, 1, "m", "m")
    r = store.discover("a", "k2/a", 2, 2, 1)  # (under a static prefix the caller's key is the same)
    assert r.state == "pending" and r.signature == (2, 2, 1) and r.key == "k2/a"


def test_interrupted_uploads_are_recovered_as_pending_keeping_the_multipart_id(store):
    store.discover_many([("big", "big", 100, 1, 1)])
    store.start_upload("big", 100, 1, 1)
    store.set_multipart("big", "uid-1", 50)
    store.add_part("big", "uid-1", Part(1, 50, "e1", "m1"))
    assert store.recover_interrupted() == 1
    r = store.get("big")
    assert r.state == "pending" and r.upload_id == "uid-1"
    assert store.parts("big", "uid-1") == {1: Part(1, 50, "e1", "m1")}
    assert store.owned_upload_ids() == {"uid-1": "big"}


def test_committed_state_survives_reopen_and_uncommitted_is_visible_to_the_writer(tmp_path):
    path = tmp_path / "s.db"
    s = Store(path)
    s.discover_many([("a", "a", 1, 1, 1)])
    assert s.get("a") is not None
    s.commit()
    s.close()
    with Store(path, readonly=True) as r:
        assert r.get("a").state == "pending"


def test_non_utf8_names_round_trip(store):
    rel = os.fsdecode(b"caf\xe9.txt")
    store.discover_many([(rel, "caf%E9.txt", 1, 1, 1)])
    assert store.get(rel).rel == rel
    assert list(store.in_dir("")) == [rel]


def test_a_corrupt_database_is_one_clear_error(tmp_path):
    p = tmp_path / "bad.db"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="is corrupt"):
        Store(p)
    assert p.read_bytes().startswith(b"this is not sqlite")  # left in place


def test_forget_only_drops_rows_that_never_reached_s3(store):
    store.discover_many([("a", "a", 1, 1, 1), ("b", "b", 1, 1, 1)])
    store.start_upload("b", 1, 1, 1)
    store.finish_upload("b", 1, 1, 1, None, "e")
    store.forget("a")
    store.forget("b")
    assert store.get("a") is None and store.get("b").state == "uploaded"


def test_wal_mode_and_full_sync(tmp_path):
    s = Store(tmp_path / "s.db")
    try:
        # synchronous is a setting of each connection: ask the store's own (2 is FULL: a commit is on
        # disk before it returns, so a committed upload survives a power cut; NORMAL, 1, would not be)
        assert s.db.read("PRAGMA synchronous") == [(2,)]
        assert s.db.read("PRAGMA journal_mode") == [("wal",)]
    finally:
        s.close()
    c = sqlite3.connect(tmp_path / "s.db")
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # WAL is kept in the file itself
    c.close()


def committed_rows(db) -> int:
    """Rows another connection can see: what has been committed."""
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT count(*) FROM files").fetchone()[0]
    finally:
        conn.close()


def test_the_committer_commits_each_burst_of_writes_within_the_interval_and_sleeps_between(tmp_path):
    s = Store(tmp_path / "s.db", commit_interval=0.05).start()
    try:
        for burst in range(3):  # after a quiet spell, a new write still gets committed
            s.discover_many([(f"f{burst}", f"f{burst}", 1, 1, 1)])
            wait_for(lambda: committed_rows(tmp_path / "s.db") == burst + 1, timeout=5,
                     what=f"burst {burst} committed")
            assert not s.db._written.is_set() or s.db._dirty  # asleep until the next write (or committing it)
    finally:
        s.close()
    assert committed_rows(tmp_path / "s.db") == 3


class _FullOnCommit:
    """A connection whose COMMIT fails the way SQLite's can on a full disk: transaction rolled back."""

    def __init__(self, conn):
        self._conn = conn

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def execute(self, sql, *args):
        if sql == "COMMIT":
            self._conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)


def test_a_commit_that_lost_writes_makes_the_store_refuse_every_later_write(tmp_path):
    store = Store(tmp_path / "s.db")
    store.discover_many([("kept.txt", "kept.txt", 1, 1, 1)])
    store.commit()
    real = store.db.conn
    store.db.conn = _FullOnCommit(real)
    store.discover_many([("lost.txt", "lost.txt", 1, 1, 2)])
    with pytest.raises(StoreError, match="the disk is full"):
        store.commit()
    # lost.txt's row is gone: acting as if it were there would skip the file, so nothing goes on
    with pytest.raises(StoreError, match="the disk is full"):
        store.discover("later.txt", "later.txt", 1, 1, 3)
    with pytest.raises(StoreError, match="the disk is full"):
        store.close()  # still closes the connection
    with pytest.raises(sqlite3.ProgrammingError):
        real.execute("SELECT 1")
    with Store(tmp_path / "s.db", readonly=True) as ro:
        assert [r.rel for r in ro.iter_all()] == ["kept.txt"]


def test_the_database_refuses_a_second_row_with_a_key_another_row_holds(tmp_path):
    with Store(tmp_path / "s.db") as st:
        st.discover("a.txt", "k/a.txt", 1, 1, 1)
        st.discover("b.txt", "k/b.txt", 1, 1, 2)
        for sql in ("UPDATE files SET key = 'k/a.txt' WHERE path = CAST('b.txt' AS BLOB)",
                    "INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, discovered_at, updated_at) "
                    "VALUES(CAST('c.txt' AS BLOB), x'', 'k/a.txt', 'uploaded', 1, 1, 3, 0, 0)"):
            with pytest.raises(IllegalTransition, match="UNIQUE constraint failed: files.key"):
                st.db.write(sql)
        # a row without a key can never be sent (and so never be cleaned up)
        with pytest.raises(IllegalTransition, match="CHECK constraint failed"):
            st.db.write("UPDATE files SET key = NULL WHERE path = CAST('b.txt' AS BLOB)")
        assert {r.rel: r.key for r in st.iter_all()} == {"a.txt": "k/a.txt", "b.txt": "k/b.txt"}


def test_a_new_file_whose_key_another_row_holds_is_parked_never_skipped(tmp_path):
    with Store(tmp_path / "s.db", clock=lambda: 1000.0) as st:
        assert st.discover_many([("a%FF.dat", "a%FF.dat", 3, 1, 1), ("x/y.txt", "x/y.txt", 3, 1, 2)]) == []
        # INSERT OR IGNORE used to drop these two without a word: lost files
        collided = st.discover_many([("new.txt", "new.txt", 1, 1, 3), ("b\udcff.dat", "a%FF.dat", 4, 1, 4),
                                     ("twin1", "same", 1, 1, 5), ("twin2", "same", 1, 1, 6),
                                     ("x/y.txt", "elsewhere", 9, 9, 9)], retry_at=4600.0)
        assert [(r.rel, r.key, r.state, r.error_kind, r.next_attempt_at) for r in collided] == [
            ("b\udcff.dat", None, "parked", "collision", 4600.0), ("twin2", None, "parked", "collision", 4600.0)]
        assert collided[0].last_error == ("b\\xff.dat would go to S3 key a%FF.dat, which a%FF.dat already has; "
                                          "parked (rename one of them)")
        got = {r.rel: (r.key, r.state) for r in st.iter_all()}
        assert got == {"a%FF.dat": ("a%FF.dat", "pending"), "x/y.txt": ("x/y.txt", "pending"),
                       "new.txt": ("new.txt", "pending"), "b\udcff.dat": (None, "parked"),
                       "twin1": ("same", "pending"), "twin2": (None, "parked")}
        # discover (one file) does the same, and parking again (a retry that finds it taken) is no error
        rec = st.discover("c.txt", "new.txt", 1, 1, 7, retry_at=5000.0)
        assert (rec.key, rec.state, rec.next_attempt_at) == (None, "parked", 5000.0)
        rec = st.discover("c.txt", "new.txt", 1, 1, 7, retry_at=6000.0)
        assert (rec.key, rec.state, rec.next_attempt_at) == (None, "parked", 6000.0)
        with pytest.raises(IllegalTransition, match="CHECK"):
            st.start_upload("c.txt", 1, 1, 7)  # a keyless row never starts an upload
        # once the other file is gone, the parked one takes its own key
        st.forget("new.txt")
        rec = st.discover("c.txt", "new.txt", 1, 1, 7)
        assert (rec.key, rec.state, rec.error_kind) == ("new.txt", "pending", None)


def test_a_new_file_at_a_deleted_or_archived_path_and_a_changed_uploaded_file_take_their_own_key(tmp_path):
    with Store(tmp_path / "s.db") as st:
        for rel, key in (("app.log", "2020/09/13/app.log"), ("b.log", "2020/09/13/b.log"),
                         ("c.log", "2020/09/13/c.log")):
            st.discover(rel, key, 1, 1, 1)
            st.start_upload(rel, 1, 1, 1)
            st.finish_upload(rel, 1, 1, 1, "m", "e")
        st.mark_removed("app.log", "deleted")
        st.mark_removed("b.log", "archived")
        assert st.discover("app.log", "2020/09/17/app.log", 2, 2, 2).key == "2020/09/17/app.log"
        assert st.discover("b.log", "2020/09/17/b.log", 2, 2, 2).key == "2020/09/17/b.log"
        # a new version of an uploaded file (changed in place or replaced: inode numbers are reused, so
        # they cannot be told apart) takes its own day's key; the earlier day's object is never replaced
        assert st.discover("c.log", "2020/09/17/c.log", 2, 2, 1).key == "2020/09/17/c.log"
        # a waiting row keeps its key (nothing of it is in S3; an open multipart upload is that key's)
        st.discover("w.log", "2020/09/13/w.log", 1, 1, 9)
        assert st.discover("w.log", "2020/09/17/w.log", 2, 2, 9).key == "2020/09/13/w.log"
        # the old day's object of app.log belongs to nobody now, and stays in S3 untouched
        assert not st.has_key("2020/09/13/app.log")


def test_a_parked_or_failed_row_parked_again_does_not_raise(tmp_path):
    with Store(tmp_path / "s.db") as st:
        st.discover("long.txt", "k" * 2000, 1, 1, 1)
        st.fail_upload("long.txt", "invalid", "too long", None, park=True)
        st.fail_upload("long.txt", "invalid", "too long", None, park=True)  # IllegalTransition before
        st.discover("f.txt", "f.txt", 1, 1, 2)
        st.fail_upload("f.txt", "network", "reset", 5.0, park=False)
        st.fail_upload("f.txt", "invalid", "bad", None, park=True)
        assert {r.rel: r.state for r in st.iter_all()} == {"long.txt": "parked", "f.txt": "parked"}
        st.discover("g.txt", "g.txt", 1, 1, 3)
        st.start_upload("g.txt", 1, 1, 3)
        st.finish_upload("g.txt", 1, 1, 3, "m", "e")
        with pytest.raises(IllegalTransition):
            st.fail_upload("g.txt", "invalid", "bad", None, park=True)  # an uploaded row is not parked


_V1_FILES = """
CREATE TABLE files (
    path BLOB PRIMARY KEY, dir BLOB NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, md5 TEXT, etag TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL, last_error TEXT, error_kind TEXT, discovered_at REAL NOT NULL, updated_at REAL NOT NULL,
    uploaded_at REAL, upload_id TEXT, part_size INTEGER) WITHOUT ROWID;
CREATE INDEX files_dir ON files(dir);
CREATE TABLE parts (path BLOB NOT NULL, upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, md5 TEXT NOT NULL, PRIMARY KEY (path, upload_id, part_number)) WITHOUT ROWID;
CREATE TABLE errors (id INTEGER PRIMARY KEY, at REAL NOT NULL, path BLOB, kind TEXT, message TEXT NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES('schema_version', '1');
"""


def _v1_row(conn, rel, key, state, discovered, uploaded=None, upload_id=None):
    conn.execute("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, discovered_at, updated_at, "
                 "uploaded_at, upload_id) VALUES(?, x'', ?, ?, 1, 1, 1, ?, ?, ?, ?)",
                 (os.fsencode(rel), key, state, discovered, discovered, uploaded, upload_id))


def test_a_version_1_database_whose_rows_share_keys_is_migrated_without_losing_a_row(tmp_path, caplog):
    db = tmp_path / "v1.db"
    conn = sqlite3.connect(str(db))
    conn.executescript(_V1_FILES)
    latin = os.fsdecode(b"a\xff.dat")
    # the bug as it happened: a%FF.dat uploaded and deleted, then the other file uploaded over its object
    _v1_row(conn, "a%FF.dat", "a%FF.dat", "deleted", 1.0, uploaded=10.0)
    _v1_row(conn, latin, "a%FF.dat", "uploaded", 2.0, uploaded=20.0)
    # before it happened: both still waiting, one with a multipart upload open
    _v1_row(conn, "x\\y.txt", "x\\y.txt", "pending", 3.0)
    _v1_row(conn, "z\\y.txt", "x\\y.txt", "pending", 4.0, upload_id="up-1")
    conn.execute("INSERT INTO parts VALUES(?, 'up-1', 1, 5, 'e', 'm')", (b"z\\y.txt",))
    _v1_row(conn, "plain.txt", "plain.txt", "uploaded", 5.0, uploaded=30.0)
    conn.commit()
    conn.close()

    with Store(db, clock=lambda: 99.0) as st:
        assert st.meta("schema_version") == str(SCHEMA_VERSION) == "7"  # through 2, 3, 4, 5 and 6, on to 7
        got = {r.rel: r for r in st.iter_all()}
        assert len(got) == 5  # every row kept
        assert st.counts() == {"pending": 1, "uploading": 0, "uploaded": 2, "failed": 0, "parked": 1,
                               "deleted": 1, "archived": 0}
        # S3 holds the bytes of the one uploaded last: it keeps the key; the deleted one keeps none
        assert (got[latin].key, got[latin].state) == ("a%FF.dat", "uploaded")
        assert (got["a%FF.dat"].key, got["a%FF.dat"].state) == (None, "deleted")
        # of two waiting files, the earlier one keeps the key; the later is parked, due now, with the reason
        assert (got["x\\y.txt"].key, got["x\\y.txt"].state) == ("x\\y.txt", "pending")
        z = got["z\\y.txt"]
        assert (z.key, z.state, z.error_kind, z.next_attempt_at, z.upload_id) == (None, "parked", "collision", 99.0,
                                                                                   None)
        assert z.last_error == ("z\\y.txt would go to S3 key x\\y.txt, which x\\y.txt already has; "
                                "parked (rename one of them)")
        assert st.parts("z\\y.txt", "up-1") == {}
        assert got["plain.txt"].key == "plain.txt"
        # the constraint is in force from now on
        with pytest.raises(IllegalTransition, match="UNIQUE"):
            st.db.write("UPDATE files SET key = 'plain.txt' WHERE path = CAST('x\\y.txt' AS BLOB)")
    assert "z\\y.txt would go to S3 key x\\y.txt" in caplog.text
    with Store(db) as st:  # opening it again changes nothing
        assert {r.rel: r.key for r in st.iter_all()} == {r: g.key for r, g in got.items()}


DAY = 86400.0


MINIMAL = "[watch]\ndirectory_to_watch = /data\n[s3]\nbucket = b-1\n"


def counted(store: Store) -> Dict[str, int]:
    """Rows per state, counted the slow way (what ``counts()`` did before schema 3)."""
    out = {s: 0 for s in STATES}
    for state, n in store.db.read("SELECT state, count(*) FROM files GROUP BY state"):
        out[state] = n
    return out


def gone(store: Store, rel: str, state: str) -> None:
    """Take ``rel`` from nothing to ``state`` (deleted or archived) the way the daemon does."""
    store.discover(rel, rel, 1, 1, 1)
    store.start_upload(rel, 1, 1, 1)
    store.finish_upload(rel, 1, 1, 1, "m", "m")
    store.mark_removed(rel, state)


# -- forgetting --------------------------------------------------------------------------------------------

def test_rows_deleted_or_archived_longer_than_forget_after_ago_are_forgotten_and_the_rest_kept(tmp_path):
    clock = Clock(0.0)
    with Store(tmp_path / "state.db", clock=clock) as store:
        for i in range(5):
            gone(store, f"old/deleted-{i}.mp4", "deleted")
        gone(store, "old/archived.mp4", "archived")
        store.discover("old/uploaded.mp4", "old/uploaded.mp4", 1, 1, 1)  # uploaded long ago, file still here
        store.start_upload("old/uploaded.mp4", 1, 1, 1)
        store.finish_upload("old/uploaded.mp4", 1, 1, 1, "m", "m")
        store.discover("old/pending.mp4", "old/pending.mp4", 1, 1, 1)
        store.discover("old/parked.mp4", "old/parked.mp4", 1, 1, 1)
        store.fail_upload("old/parked.mp4", "auth", "denied", None, park=True)
        clock.t = 29 * DAY
        gone(store, "recent/deleted.mp4", "deleted")
        clock.t = 31 * DAY

        # in bounded batches: each one its own committed transaction, the last one short
        assert [store.forget_done(clock.t - 30 * DAY, limit=2) for _ in range(4)] == [2, 2, 2, 0]
        left = {r.rel: r.state for r in store.iter_all()}
        assert left == {"old/uploaded.mp4": "uploaded", "old/pending.mp4": "pending", "old/parked.mp4": "parked",
                        "recent/deleted.mp4": "deleted"}
        assert store.counts() == counted(store) == {"pending": 1, "uploading": 0, "uploaded": 1, "failed": 0,
                                                     "parked": 1, "deleted": 1, "archived": 0}
        # what forgetting gives up, as documented: the key is free again for a file at another path
        store.discover("elsewhere.mp4", "old/deleted-0.mp4", 1, 1, 1)
        assert store.get("elsewhere.mp4").key == "old/deleted-0.mp4"
    with Store(tmp_path / "state.db") as store:  # committed: a reopen sees the same
        assert store.get("old/archived.mp4") is None and store.counts() == counted(store)


def test_forget_after_zero_keeps_every_row_and_the_default_is_30_days(tmp_path):
    assert parse_config(MINIMAL).daemon.forget_after == 30 * DAY
    with pytest.raises(ConfigError, match=r"\[daemon\] forget_after.*'soon'.*duration"):
        parse_config(MINIMAL + "[daemon]\nforget_after = soon\n")
    for text, left in (("0", {"a.mp4", "b.mp4"}), ("30d", {"b.mp4"})):
        db = tmp_path / f"state-{text}.db"
        with Store(db, clock=lambda: time.time() - 40 * DAY) as store:
            gone(store, "a.mp4", "deleted")
        with Store(db) as store:
            gone(store, "b.mp4", "deleted")
            cfg = parse_config(MINIMAL + f"[daemon]\nforget_after = {text}\n")
            Daemon(cfg, store=store).housekeeping.forget_old_rows()
            assert {r.rel for r in store.iter_all()} == left  # a.mp4 deleted 40 days ago, b.mp4 now


# -- counts through every kind of move ----------------------------------------------------------------------

NAMES = ("a", "b", "c", "d", "e")


OPS = st.one_of(
    st.tuples(st.just("discover"), st.sampled_from(NAMES), st.sampled_from(NAMES), st.integers(1, 3)),
    st.tuples(st.just("discover_many"), st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES)),
                                                 max_size=4)),
    st.tuples(st.just("start"), st.sampled_from(NAMES), st.integers(1, 3)),
    st.tuples(st.just("finish"), st.sampled_from(NAMES), st.integers(1, 3)),
    st.tuples(st.just("sent"), st.sampled_from(NAMES), st.integers(1, 3)),
    st.tuples(st.just("fail"), st.sampled_from(NAMES), st.booleans()),
    st.tuples(st.just("requeue"), st.sampled_from(NAMES), st.integers(1, 3)),
    st.tuples(st.just("remove"), st.sampled_from(NAMES), st.sampled_from(("deleted", "archived"))),
    st.tuples(st.just("forget"), st.sampled_from(NAMES)),
    st.tuples(st.just("recover")),
    st.tuples(st.just("retry")),
    st.tuples(st.just("forget_done"), st.integers(1, 3)),
    st.tuples(st.just("tick")),
    st.tuples(st.just("reopen")),
)


def apply(store: Store, op: tuple, clock: Clock, db: Path) -> Store:
    """Run one of OPS on ``store`` (a move the machine or the schema refuses is refused, that
    statement only); returns the store (another one after a reopen)."""
    kind, args = op[0], op[1:]
    try:
        if kind == "discover":
            rel, key, size = args
            store.discover(rel, key, size, 1, 1, retry_at=clock.t)
        elif kind == "discover_many":
            store.discover_many([(rel, key, 1, 1, 1) for rel, key in args[0]], retry_at=clock.t)
        elif kind == "start":
            store.start_upload(args[0], args[1], 1, 1)
        elif kind == "finish":
            store.finish_upload(args[0], args[1], 1, 1, "m", "m")
        elif kind == "sent":
            store.record_sent([(args[0], args[1], 1, 1, "m", "m")])
        elif kind == "fail":
            store.fail_upload(args[0], "network", "reset", clock.t + 1, park=args[1])
        elif kind == "requeue":
            store.requeue(args[0], args[1], 1, 1)
        elif kind == "remove":
            store.mark_removed(args[0], args[1])
        elif kind == "forget":
            store.forget(args[0])
        elif kind == "recover":
            store.recover_interrupted()
        elif kind == "retry":
            store.retry_parked()
        elif kind == "forget_done":
            store.forget_done(clock.t - 5.0, limit=args[0])
        elif kind == "tick":
            clock.t += 3.0
        elif kind == "reopen":
            store.close()
            store = Store(db, clock=clock)
    except IllegalTransition:
        assert store.db.broken is None
    return store



@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=40))
def test_counts_stay_exact_through_every_kind_of_move(ops):
    """Random sequences of every store operation (keys drawn from a small pool, so collisions come up;
    moves that are illegal are refused as they would be): after each one, the counts the triggers
    keep equal a count of the rows."""
    clock = Clock(0.0)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "state.db"
        store = Store(db, clock=clock)
        try:
            for op in ops:
                store = apply(store, op, clock, db)
                assert store.counts() == counted(store), f"after {op}"
        finally:
            store.close()


SENT = st.lists(st.tuples(st.sampled_from(NAMES + ("zz",)), st.integers(1, 2)), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=30), batch=SENT, hooked=st.booleans())
def test_a_batch_recorded_set_based_answers_and_writes_exactly_what_row_by_row_does(ops, batch, hooked):
    """record_sent's two statements per batch against its row-by-row guard, from the same random
    history: the same answer per row (a path twice in a batch, another version, a row that is not
    waiting or does not exist among them), the same rows after, the same hook events."""
    from s3_uploader import events
    from s3_uploader.store import moves

    clock = Clock(0.0)
    with tempfile.TemporaryDirectory() as tmp:
        answers, rows, hooks = [], [], []
        for set_based in (True, False):
            db = Path(tmp) / f"state-{set_based}.db"
            store = Store(db, clock=clock)
            clock.t = 0.0
            try:
                store.discover_many([(n, n, 1, 1, 1) for n in NAMES])  # most rows waiting: most of a batch moves
                for op in ops:
                    store = apply(store, op, clock, db)
                if hooked:
                    cfg = parse_config(MINIMAL + "[hooks]\non_uploaded = true\n")
                    store.events = events.EventLog(lambda: cfg, clock)
                saved, moves.SET_BASED = moves.SET_BASED, set_based
                try:
                    answers.append(store.record_sent([(n, size, 1, 1, f"m{i}", f"e{i}")
                                                      for i, (n, size) in enumerate(batch)]))
                finally:
                    moves.SET_BASED = saved
                rows.append(sorted(store.iter_all()))
                hooks.append(store.query("SELECT event, path FROM hook_events ORDER BY id"))
                assert store.counts() == counted(store)
            finally:
                store.close()
        assert answers[0] == answers[1] and len(answers[0]) == len(batch)
        assert rows[0] == rows[1] and hooks[0] == hooks[1]


FOUND = st.lists(st.tuples(st.sampled_from(NAMES + ("y", "z")), st.sampled_from(NAMES + ("y", "z"))), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=30), batch=FOUND, chunk=st.sampled_from((1, 3, 100)))
def test_new_files_inserted_a_chunk_to_a_statement_end_as_one_by_one_leaves_them(ops, batch, chunk):
    """discover_many's multi-row INSERTs (``chunk`` rows each) against its one-by-one path, from the
    same random history: the same rows after (a path known already, a key another row or an
    earlier file of the batch holds, a path twice), the same collided rows returned."""
    from s3_uploader.store import moves

    clock = Clock(0.0)
    with tempfile.TemporaryDirectory() as tmp:
        got, rows = [], []
        for chunked in (True, False):
            db = Path(tmp) / f"state-{chunked}.db"
            store = Store(db, clock=clock)
            clock.t = 0.0
            try:
                for op in ops:
                    store = apply(store, op, clock, db)
                found = [(rel, key, 1, 1, 1) for rel, key in batch]
                if chunked:
                    saved, moves.INSERT_CHUNK = moves.INSERT_CHUNK, chunk
                    try:
                        got.append(store.discover_many(found, retry_at=clock.t))
                    finally:
                        moves.INSERT_CHUNK = saved
                else:
                    got.append(store.moves._discover_one_by_one(found, clock.t, clock.t))
                rows.append(sorted(store.iter_all()))
                assert store.counts() == counted(store)
            finally:
                store.close()
        assert got[0] == got[1] and rows[0] == rows[1]


def test_the_waiting_rows_paged_by_path_with_when_each_was_discovered(store):
    """waiting_page (the rescan's sweep for vanished files): every waiting row and none other, in
    path order, a page at a time, with the discovered_at a Record of it has."""
    names = ["p1", "p2", "u1", "f1", "k1", "d1", "x1", "p3"]
    store.discover_many([(n, n, 1, 1, 1) for n in names])
    store.start_upload("u1", 1, 1, 1)
    store.fail_upload("f1", "network", "reset", 5.0, park=False)
    store.fail_upload("k1", "auth", "denied", None, park=True)
    store.record_sent([("x1", 1, 1, 1, "m", "e")])
    gone(store, "d1", "deleted")
    store.db.clock.t += 7
    store.discover("p0", "p0", 1, 1, 1)
    pages, after = [], b""
    while True:
        page = store.waiting_page(after, limit=2)
        if not page:
            break
        pages.append(page)
        after = page[-1][0]
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    got = [row for p in pages for row in p]
    assert got == [(os.fsencode(r.rel), r.discovered_at) for r in store.in_states(WAITING_STATES, limit=100)]
    assert [p for p, _ in got] == [b"f1", b"k1", b"p0", b"p1", b"p2", b"p3", b"u1"]
    assert dict(got)[b"p0"] == dict(got)[b"p1"] + 7


def test_a_batch_larger_than_one_statement_and_a_row_a_constraint_refuses(store):
    """Batches go SENT_CHUNK rows to a statement; a constraint that refuses one row's move (here a
    trigger) costs that row only: the rest of its statement's rows still move."""
    from s3_uploader.store import moves

    n = moves.SENT_CHUNK * 2 + 17
    store.discover_many([(f"f{i}", f"f{i}", 1, 1, 1) for i in range(n)])
    batch = [(f"f{i}", 1, 1, 2 if i % 50 == 7 else 1, "m", "e") for i in range(n)]  # every 50th: another inode
    assert store.record_sent(batch) == [i % 50 != 7 for i in range(n)]
    assert store.counts()["uploaded"] == n - len(range(7, n, 50))
    store.discover_many([("g1", "g1", 1, 1, 1), ("g2", "g2", 1, 1, 1), ("g3", "g3", 1, 1, 1)])
    store.db.conn.execute("CREATE TEMP TRIGGER no_g2 BEFORE UPDATE OF state ON files WHEN new.path = x'6732' "
                          "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    assert store.record_sent([(g, 1, 1, 1, "m", "e") for g in ("g1", "g2", "g3")]) == [True, False, True]
    assert [store.get(g).state for g in ("g1", "g2", "g3")] == ["uploaded", "pending", "uploaded"]
    assert store.counts() == counted(store)


def test_a_version_2_database_is_migrated_keeping_every_row_and_counted_once(tmp_path):
    db = tmp_path / "state.db"
    with Store(db, clock=Clock()) as store:
        store.discover_many([(f"f{i}", f"f{i}", 1, 1, 1) for i in range(6)])
        gone(store, "x", "deleted")
        store.start_upload("f0", 1, 1, 1)
    # what schema 2 was: no state_counts, no triggers, none of schema 3's indexes
    conn = sqlite3.connect(str(db))
    conn.executescript("DROP TRIGGER files_counted_insert; DROP TRIGGER files_counted_delete; "
                       "DROP TRIGGER files_counted_move; DROP TABLE state_counts; DROP INDEX files_waiting; "
                       "DROP INDEX files_gone; DROP TABLE hook_events; "
                       "UPDATE meta SET value = '2' WHERE name = 'schema_version';")
    conn.close()
    expected = {"pending": 5, "uploading": 1, "uploaded": 0, "failed": 0, "parked": 0, "deleted": 1, "archived": 0}
    # ``status`` before the daemon has opened it since the upgrade: counted the old way, nothing written
    with Store(db, readonly=True) as store:
        assert store.counts() == expected and store.oldest_waiting().state in ("pending", "uploading")
        assert status_data(store)["total"] == 7
    with Store(db, clock=Clock()) as store:
        assert store.meta("schema_version") == str(SCHEMA_VERSION)
        assert len(list(store.iter_all())) == 7
        assert store.counts() == counted(store) == expected
        store.finish_upload("f0", 1, 1, 1, "m", "m")
        assert store.counts() == counted(store)


def test_a_version_5_database_gets_the_checksum_column_keeping_every_row(tmp_path):
    db = tmp_path / "state.db"
    with Store(db, clock=Clock()) as store:
        store.discover_many([(f"f{i}", f"f{i}", 1, 1, 1) for i in range(3)])
        store.start_upload("f0", 1, 1, 1)
        store.finish_upload("f0", 1, 1, 1, "m", "m")
    conn = sqlite3.connect(str(db))  # what schema 5 was: no files.checksum
    conn.executescript("ALTER TABLE files DROP COLUMN checksum; UPDATE meta SET value = '5' WHERE name = 'schema_version';")
    conn.close()
    with Store(db, clock=Clock()) as store:
        assert store.meta("schema_version") == str(SCHEMA_VERSION) == "7"
        rows = {r.rel: r for r in store.iter_all()}
        assert len(rows) == 3 and rows["f0"].state == "uploaded" and rows["f0"].checksum is None
        store.start_upload("f1", 1, 1, 1)
        store.finish_upload("f1", 1, 1, 1, "m", "m", "CRC32C:FULL_OBJECT:AAAAAA==")
        assert store.get("f1").checksum == "CRC32C:FULL_OBJECT:AAAAAA=="
        # uploaded again by the one-step path (no checksum sent): the old one must not stay recorded
        store.discover("f1", "f1", 2, 2, 2)
        assert store.record_sent([("f1", 2, 2, 2, "n", "n")]) == [True]
        assert store.get("f1").checksum is None


# -- what runs every few seconds costs the same at any size ----------------------------------------------

def fill(db: Path, rows: int) -> None:
    """``rows`` rows, as months of a camera leave them: nearly all deleted, some uploaded, a few waiting,
    one parked, plus the errors table at its bound."""
    with Store(db, clock=Clock()) as store:
        for i in range(300):
            store.add_error(f"cam/{i}.mp4", "network", "reset")
        store.discover("cam/parked.mp4", "cam/parked.mp4", 1, 1, 1)
        store.fail_upload("cam/parked.mp4", "auth", "denied", None, park=True)
        store.commit()
    conn = sqlite3.connect(str(db))
    params = []
    for i in range(rows):
        state = "pending" if i % 1000 == 7 else "uploaded" if i % 10 == 0 else "deleted"
        rel = f"cam{i % 4}/2026-{i % 12 + 1:02d}-{i % 28 + 1:02d}/{i:08d}.mp4".encode()
        params.append((rel, rel.rpartition(b"/")[0], rel.decode(), state, 10 + i, 1000.0 - i, 1000.0 - i))
    conn.executemany("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, discovered_at, updated_at) "
                     "VALUES(?, ?, ?, ?, ?, 1, 1, ?, ?)", [(p, d, k, s, z, t, u) for p, d, k, s, z, t, u in params])
    conn.commit()
    conn.close()


def vm_steps(store: Store, fn) -> int:
    """SQLite virtual-machine instructions ``fn`` runs."""
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    store.db.conn.set_progress_handler(tick, 1)
    try:
        fn()
    finally:
        store.db.conn.set_progress_handler(None, 0)
    return steps[0]


def test_counts_the_oldest_waiting_file_status_and_an_idle_forget_pass_cost_the_same_at_20000_rows_as_at_200(
        tmp_path):
    costs: List[Dict[str, int]] = []
    for rows in (200, 20_000):
        db = tmp_path / f"{rows}.db"
        fill(db, rows)
        with Store(db, clock=Clock(1000.0)) as store:
            assert store.counts() == counted(store) and sum(store.counts().values()) == rows + 1
            costs.append({
                "counts": vm_steps(store, store.counts),
                "oldest_waiting": vm_steps(store, store.oldest_waiting),
                "forget pass, nothing due": vm_steps(store, lambda: store.forget_done(-1e18)),
            })
        with Store(db, readonly=True) as store:  # what ``status`` runs, in its own process
            costs[-1]["status"] = vm_steps(store, lambda: status_data(store))
            oldest = store.db.read("SELECT path FROM files NOT INDEXED WHERE state IN ('pending', 'uploading', "
                                 "'failed', 'parked') ORDER BY discovered_at LIMIT 1")[0][0]
            assert store.oldest_waiting().rel == oldest.decode()
    small, big = costs
    for what in small:
        # a B-tree one level deeper costs no extra instruction; a few dozen rows' worth of work would
        assert big[what] <= small[what] + 100, f"{what}: {small[what]} steps at 200 rows, {big[what]} at 20,000"


def test_a_page_of_the_waiting_rows_costs_the_same_with_20000_waiting_as_with_200(tmp_path):
    """Every rescan pages through the waiting rows (files gone before they were sent); a page must
    not cost more when a backlog (an outage, a first start) makes them many."""
    costs = []
    for rows in (200, 20_000):
        db = tmp_path / f"{rows}.db"
        Store(db).close()
        conn = sqlite3.connect(str(db))
        conn.executemany("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, discovered_at, updated_at) "
                         "VALUES(?, 'cam', ?, ?, 1, 1, 1, 1, 1)",
                         [(f"cam/{i:06d}.mp4".encode(), f"cam/{i:06d}.mp4", ("pending", "failed", "deleted")[i % 3])
                          for i in range(rows)])
        conn.commit()
        conn.close()
        with Store(db) as store:
            page = store.in_states(WAITING_STATES, after=b"cam/000050.mp4", limit=20)
            assert [r.rel for r in page] == [f"cam/{i:06d}.mp4" for i in range(51, 81) if i % 3 != 2][:20]
            costs.append(vm_steps(store, lambda: store.in_states(WAITING_STATES, after=b"cam/000050.mp4", limit=20)))
    assert costs[1] <= costs[0] + 100, f"{costs[0]} steps with 200 rows, {costs[1]} with 20,000"


def test_a_scan_that_finds_a_file_changed_while_a_worker_uploads_it_leaves_the_row_to_the_worker(tmp_path):
    """Found by review: the scanner saw a changed signature, was pre-empted, a worker moved the row to
    uploading, then the scan's discover moved it back to pending; the worker's finish raised
    IllegalTransition and the worker thread's failure stopped the daemon."""
    with Store(tmp_path / "s.db") as st:
        st.discover("a.txt", "a.txt", 1, 1, 1)
        st.start_upload("a.txt", 1, 1, 1)  # the worker has it
        rec = st.discover("a.txt", "a.txt", 2, 2, 1)  # the scan's late look at the changed file
        assert (rec.state, rec.signature) == ("uploading", (1, 1, 1))
        st.requeue("a.txt", 2, 2, 1)  # the worker's re-check found the change: pending, new signature
        assert (st.get("a.txt").state, st.get("a.txt").signature) == ("pending", (2, 2, 1))


def test_retries_scheduled_by_a_clock_that_has_since_gone_back_are_due_now(tmp_path):
    """Found by review: a box that booted with its clock years ahead scheduled its retries then;
    after NTP set it back they would wait, unseen, until the clock caught up."""
    clock = [2_000_000_000.0]  # 2033
    with Store(tmp_path / "s.db", clock=lambda: clock[0]) as store:
        for rel, at in (("ahead.mp4", clock[0] + 60), ("soon.mp4", clock[0] + 60)):
            store.discover(rel, rel, 1, 1, 1)
            store.fail_upload(rel, "network", "down", at, park=False)
        clock[0] = 1_800_000_000.0  # NTP: back to 2027
        store.start_upload("soon.mp4", 1, 1, 1)  # tried again, failed again: scheduled by the right clock
        store.fail_upload("soon.mp4", "network", "down", clock[0] + 60, park=False)
        assert store.due_retries(clock[0], 10) == []
        due = store.due_retries(clock[0], 10, horizon=3 * 3600)
        assert [r.rel for r in due] == ["ahead.mp4"]


def test_a_keyless_collision_row_is_never_recorded_as_sent(tmp_path):
    """Found by the counts property test: the asyncio sender's one-step record of a PUT on a row
    parked for a collision (no key) was refused by the schema and raised StoreError, which stops the
    daemon; it is a row that did not move."""
    with Store(tmp_path / "s.db") as st:
        st.discover_many([("b", "a", 1, 1, 1), ("a", "a", 1, 1, 2)])
        assert st.get("a").key is None
        assert st.record_sent([("a", 1, 1, 2, "m", "e")]) == [False]
        assert st.get("a").state == "parked"


# -- the backlog in upload order (schema 7: files.rank, files_backlog) ----------------------------------

def _all_pages(store, newest: bool, limit: int) -> List[str]:
    """Every page of the backlog, ``limit`` rows a page, each after the last row of the one before."""
    out: List[str] = []
    after = None
    while True:
        page = store.backlog_page(newest, after, limit)
        assert len(page) <= limit
        if not page:
            return out
        out += [os.fsdecode(p) for _, _, p in page]
        after = page[-1]


def _ranked(store, priority):
    from s3_uploader.order import Order
    o = Order("oldest", priority)
    return store.rerank(o.rank, o.lowest)


@pytest.mark.parametrize("limit", [1, 2, 3, 100])
def test_the_backlog_pages_by_rank_then_mtime_and_path_either_way(store, limit):
    # (path, mtime_ns): b and d share an mtime
    files = [("a.mp4", 50), ("b.mp4", 20), ("c.jpg", 40), ("d.mp4", 20), ("e.jpg", 10), ("f.mp4", 5)]
    _ranked(store, ("*.jpg",))  # rows discovered from now on are ranked by it
    store.discover_many([(rel, rel, 1, m, i) for i, (rel, m) in enumerate(files)])
    assert {rel: store.db.read("SELECT rank FROM files WHERE path = ?", (rel.encode(),))[0][0]
            for rel, _ in files} == {"a.mp4": 1, "b.mp4": 1, "c.jpg": 0, "d.mp4": 1, "e.jpg": 0, "f.mp4": 1}
    assert _all_pages(store, False, limit) == ["e.jpg", "c.jpg", "f.mp4", "b.mp4", "d.mp4", "a.mp4"]
    assert _all_pages(store, True, limit) == ["c.jpg", "e.jpg", "a.mp4", "d.mp4", "b.mp4", "f.mp4"]


def test_only_pending_rows_are_in_the_backlog(store):
    store.discover_many([(f"f{i}", f"f{i}", 1, i, i) for i in range(5)])
    store.start_upload("f0", 1, 0, 0)  # in flight: the worker has it
    store.start_upload("f1", 1, 1, 1)
    store.fail_upload("f1", "network", "reset", 2000.0, park=False)  # failed: retries keep their own order
    store.start_upload("f2", 1, 2, 2)
    store.finish_upload("f2", 1, 2, 2, "m", "m")
    assert _all_pages(store, False, 10) == ["f3", "f4"]


def test_a_row_written_between_two_pages_is_seen_when_it_sorts_after_the_cursor(store):
    store.discover_many([(f"f{i}", f"f{i}", 1, 10 * i, i) for i in range(4)])  # mtimes 0, 10, 20, 30
    first = store.backlog_page(False, None, 2)
    assert [p for _, _, p in first] == [b"f0", b"f1"]
    store.discover_many([("early", "early", 1, 5, 10), ("late", "late", 1, 25, 11)])
    store.start_upload("f2", 1, 20, 2)  # taken meanwhile: no longer waiting
    rest = store.backlog_page(False, first[-1], 10)
    # "early" sorts before the cursor: a scan hands it on itself (a rescan's pass starts from the top)
    assert [p for _, _, p in rest] == [b"late", b"f3"]


def test_a_new_priority_ranks_every_waiting_row_again_and_only_those(store):
    store.discover_many([("a.mp4", "a.mp4", 1, 1, 1), ("b.jpg", "b.jpg", 1, 2, 2), ("c.jpg", "c.jpg", 1, 3, 3)])
    store.start_upload("c.jpg", 1, 3, 3)
    store.finish_upload("c.jpg", 1, 3, 3, "m", "m")  # done: its rank no longer matters
    assert _all_pages(store, False, 10) == ["a.mp4", "b.jpg"]
    assert _ranked(store, ("*.jpg",)) == 1  # a.mp4 goes to rank 1; b.jpg stays at 0
    assert _all_pages(store, False, 10) == ["b.jpg", "a.mp4"]
    assert store.db.read("SELECT rank FROM files WHERE path = ?", (b"c.jpg",))[0][0] == 0
    assert _ranked(store, ("*.jpg",)) == 0  # nothing changed: nothing written
    store.discover("a.mp4", "a.mp4", 2, 9, 1)  # discovered again: ranked by the priority in force
    assert _all_pages(store, False, 10) == ["b.jpg", "a.mp4"]
    assert _ranked(store, ()) == 1  # no patterns: every rank 0 again
    assert _all_pages(store, False, 10) == ["b.jpg", "a.mp4"]  # back to mtime order (2 before 9)


def test_a_version_6_database_gets_the_rank_column_and_the_backlog_index_keeping_every_row(tmp_path):
    db = tmp_path / "state.db"
    with Store(db, clock=Clock()) as store:
        store.discover_many([(f"f{i}", f"f{i}", 1, 10 - i, i) for i in range(3)])
        store.start_upload("f0", 1, 10, 0)
        store.finish_upload("f0", 1, 10, 0, "m", "m")
    conn = sqlite3.connect(str(db))  # what schema 6 was: no files.rank, no files_backlog
    conn.executescript("DROP INDEX files_backlog; ALTER TABLE files DROP COLUMN rank; "
                       "UPDATE meta SET value = '6' WHERE name = 'schema_version';")
    conn.close()
    with Store(db, clock=Clock()) as store:
        assert store.meta("schema_version") == str(SCHEMA_VERSION) == "7"
        rows = {r.rel: r for r in store.iter_all()}
        assert len(rows) == 3 and rows["f0"].state == "uploaded" and rows["f1"].state == "pending"
        assert store.db.read("SELECT count(*) FROM files WHERE rank = 0")[0][0] == 3
        assert _all_pages(store, False, 10) == ["f2", "f1"]  # the index is there (INDEXED BY would fail)
        assert store.counts() == counted(store)


@pytest.mark.parametrize("newest", [False, True], ids=["oldest", "newest"])
def test_a_page_of_the_backlog_costs_the_same_deep_in_20000_waiting_rows_as_at_the_start_of_200(tmp_path, newest):
    """The feed pages through the whole backlog after every rescan: a page deep into a large one
    (and the move to the next rank) must not cost more than the first page of a small one."""
    costs = []
    for rows in (200, 20_000):
        db = tmp_path / f"{rows}-{newest}.db"
        Store(db).close()
        conn = sqlite3.connect(str(db))
        # two ranks; states mixed as a backlog leaves them (failed and uploaded rows are not in it)
        conn.executemany("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, discovered_at, updated_at, "
                         "rank) VALUES(?, 'cam', ?, ?, 1, ?, 1, 1, 1, ?)",
                         [(f"cam/{i:06d}.mp4".encode(), f"cam/{i:06d}.mp4", ("pending", "failed", "uploaded")[i % 3],
                           i // 2, 0 if i < rows // 2 else 1) for i in range(rows)])
        conn.commit()
        conn.close()
        with Store(db) as store:
            # the last page of rank 0 (five rows before its end), on into rank 1
            last = rows // 2 - 12 if not newest else 12
            cursor = (0, last // 2, f"cam/{last:06d}.mp4".encode())
            page = store.backlog_page(newest, cursor, 20)
            assert len(page) == 20 and {r[0] for r in page} == {0, 1}
            costs.append(vm_steps(store, lambda: store.backlog_page(newest, cursor, 20)))
    assert costs[1] <= costs[0] + 200, f"{costs[0]} steps with 200 rows, {costs[1]} with 20,000"

"""The SQLite state machine: legal moves, illegal ones refused, durability across reopen."""
from __future__ import annotations

import os
import sqlite3

import pytest
from helpers import wait_for

from s3_uploader.store import SOURCES, TRANSITIONS, IllegalTransition, Part, Store, StoreError


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


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
    s.close()
    c = sqlite3.connect(tmp_path / "s.db")
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
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
            assert not s._written.is_set() or s._dirty  # asleep until the next write (or committing it)
    finally:
        s.close()
    assert committed_rows(tmp_path / "s.db") == 3

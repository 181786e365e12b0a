"""events.py: hook events recorded in the transaction of the move that causes them, and their life
(delivered, failed with backoff, given up) under a fake clock."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Dict

import hypothesis.strategies as st
from helpers import Clock
from hypothesis import given, settings

from s3_uploader import events
from s3_uploader.config import Config, parse_config
from s3_uploader.store import Store


def config(tmp: Path, **hooks: object) -> Config:
    lines = "\n".join(f"{k} = {v}" for k, v in hooks.items())
    return parse_config(f"[watch]\ndirectory_to_watch = {tmp / 'inbox'}\n[s3]\nbucket = bkt\n"
                        f"[cleanup]\narchive_directory = {tmp / 'archive'}\n[hooks]\n{lines}\n")


def open_store(tmp: Path, clock: Clock, **hooks: object) -> Store:
    store = Store(tmp / "s.db", clock=clock)
    cfg = config(tmp, **hooks)
    store.events = events.EventLog(lambda: cfg, clock)
    return store


def rows(db: Path) -> list:
    """The committed event rows, as another process sees them."""
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT target, event, path, abs_path, bucket, key, size, etag, error, state "
                            "FROM hook_events ORDER BY id").fetchall()
    finally:
        conn.close()


def upload(store: Store, rel: str) -> None:
    store.discover(rel, f"k/{rel}", 3, 7, 9)
    store.start_upload(rel, 3, 7, 9)
    store.finish_upload(rel, 3, 7, 9, "md5", '"etag"')


def test_with_no_hook_configured_no_move_writes_an_event(tmp_path):
    clock = Clock()
    with open_store(tmp_path, clock) as store:
        upload(store, "a")
        store.discover("b", "k/b", 1, 1, 1)
        store.record_sent([("b", 1, 1, 1, "m", "e")])
        store.discover("c", "k/c", 1, 1, 1)
        store.fail_upload("c", "invalid", "too long", None, park=True)
        store.mark_removed("a", "deleted", (3, 7, 9))
    assert rows(tmp_path / "s.db") == []


def test_each_move_records_one_row_per_configured_target_committed_with_the_move(tmp_path):
    clock = Clock()
    with open_store(tmp_path, clock, on_uploaded="true", on_deleted="true", webhook_url="http://127.0.0.1:9/h") as st:
        st.commit()
        upload(st, "a")
        # not committed yet: neither the move nor its events are visible to another process
        assert rows(tmp_path / "s.db") == []
        st.commit()
        assert [r[:2] for r in rows(tmp_path / "s.db")] == [("command", "uploaded"), ("webhook", "uploaded")]
        st.discover("b", "k/b", 5, 1, 1)
        st.record_sent([("b", 5, 1, 1, "m", "e2"), ("zz", 1, 1, 1, "m", "e")])  # zz has no row: no event
        st.mark_removed("a", "archived", (3, 7, 9))
        st.discover("p", "k/p", 1, 1, 1)
        st.fail_upload("p", "invalid", "key too long", None, park=True)  # no on_parked: webhook only
    got = rows(tmp_path / "s.db")
    assert [(r[0], r[1], r[2]) for r in got[2:]] == [
        ("command", "uploaded", b"b"), ("webhook", "uploaded", b"b"),
        ("command", "archived", b"a"), ("webhook", "archived", b"a"), ("webhook", "parked", b"p")]
    assert got[0][3:] == (os.fsencode(tmp_path / "inbox" / "a"), "bkt", "k/a", 3, '"etag"', None, "pending")
    assert got[4][3] == os.fsencode(tmp_path / "archive" / "a")  # archived: where its copy is now
    assert got[6][8] == "key too long"  # parked: why


def test_a_file_parked_again_records_no_second_event(tmp_path):
    with open_store(tmp_path, Clock(), on_parked="true") as st:
        st.discover("p", "k/p", 1, 1, 1)
        st.fail_upload("p", "invalid", "bad", None, park=True)
        st.fail_upload("p", "invalid", "bad again", None, park=True)
    assert len(rows(tmp_path / "s.db")) == 1


def test_failed_attempts_back_off_doubling_to_the_cap_then_the_event_is_given_up_and_counted(tmp_path):
    clock = Clock(1000.0)
    with open_store(tmp_path, clock, on_uploaded="true") as st:
        upload(st, "a")
        with st.connection(write=True) as conn:
            (ev,) = events.due(conn, clock.t, 4)
            waits = []
            for _ in range(11):
                at = events.failed(conn, ev.id, "exit status 1", clock.t, max_attempts=12)
                assert at is not None
                waits.append(at - clock.t)
                assert events.due(conn, at - 0.01, 4) == []  # not before its time
                clock.t = at
                assert [e.id for e in events.due(conn, clock.t, 4)] == [ev.id]
            assert waits == [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]
            assert events.failed(conn, ev.id, "exit status 2", clock.t, max_attempts=12) is None
            assert events.due(conn, clock.t + 10**6, 4) == []
            assert events.summary(conn) == {"pending": 0, "delivered": 0, "given_up": 1,
                                            "last_error": "exit status 2"}
            assert events.prune(conn, clock.t - 1) == 0 and events.prune(conn, clock.t + 1) == 1


def test_due_skips_events_being_delivered_and_takes_those_a_clock_set_back_left_far_ahead(tmp_path):
    clock = Clock(1000.0)
    with open_store(tmp_path, clock, on_uploaded="true") as st:
        upload(st, "a")
        upload(st, "b")
        with st.connection(write=True) as conn:
            first, second = events.due(conn, clock.t, 4)
            assert [e.id for e in events.due(conn, clock.t, 4, busy=[first.id])] == [second.id]
            assert [e.rel for e in events.due(conn, clock.t, 1)] == ["a"]
            events.failed(conn, first.id, "x", clock.t, 5)
            conn.execute("UPDATE hook_events SET next_attempt_at = ? WHERE id = ?", (clock.t + 10**7, first.id))
            assert {e.id for e in events.due(conn, clock.t, 4)} == {first.id, second.id}


@settings(max_examples=60, deadline=None)
@given(outcomes=st.lists(st.booleans(), min_size=1, max_size=12), max_attempts=st.integers(1, 6))
def test_an_event_is_delivered_once_its_first_success_comes_before_max_attempts_failures(tmp_path_factory,
                                                                                        outcomes, max_attempts):
    tmp = tmp_path_factory.mktemp("ev")
    clock = Clock(5000.0)
    with open_store(tmp, clock, webhook_url="http://127.0.0.1:9/") as st:
        upload(st, "a")
        with st.connection(write=True) as conn:
            (ev,) = events.due(conn, clock.t, 4)
            fate: Dict[str, int] = {"failed": 0}
            for ok in outcomes:
                (now_due,) = events.due(conn, clock.t, 4) or (None,)
                if now_due is None:
                    break  # delivered or given up: nothing more is handed out
                if ok:
                    assert events.delivered(conn, ev.id)
                    continue
                fate["failed"] += 1
                at = events.failed(conn, ev.id, "HTTP 500", clock.t, max_attempts)
                assert (at is None) == (fate["failed"] >= max_attempts)
                if at is not None:
                    assert at == clock.t + events.backoff(fate["failed"])
                    clock.t = at
            s = events.summary(conn)
    first_ok = outcomes.index(True) if True in outcomes else len(outcomes)
    failures_before = min(first_ok, len(outcomes))
    if failures_before >= max_attempts:
        assert (s["given_up"], s["delivered"], s["pending"]) == (1, 0, 0)
    elif first_ok < len(outcomes):
        assert (s["given_up"], s["delivered"], s["pending"]) == (0, 1, 0)
    else:
        assert (s["given_up"], s["delivered"], s["pending"]) == (0, 0, 1)


def test_a_summary_of_a_database_from_before_hooks_is_all_zero(tmp_path):
    with Store(tmp_path / "s.db") as st:
        with st.connection(write=True) as conn:
            conn.execute("DROP TABLE hook_events")
        st.commit()
    with Store(tmp_path / "s.db", readonly=True) as st:
        with st.connection() as conn:
            assert events.summary(conn) == {"pending": 0, "delivered": 0, "given_up": 0, "last_error": None}


def test_a_file_whose_name_is_not_utf8_gets_its_events_with_its_own_bytes(tmp_path):
    rel = os.fsdecode(b"front/caf\xe9.mp4")  # Latin-1 bytes: not UTF-8
    clock = Clock()
    with open_store(tmp_path, clock, on_uploaded="true") as st:
        st.discover(rel, "front/caf%E9.mp4", 3, 7, 9)
        st.start_upload(rel, 3, 7, 9)
        st.finish_upload(rel, 3, 7, 9, "md5", '"etag"')
        with st.connection() as conn:
            (ev,) = events.due(conn, clock.t, 4)
    assert (ev.rel, ev.path) == (rel, os.path.join(str(tmp_path / "inbox"), "front", os.fsdecode(b"caf\xe9.mp4")))
    assert os.fsencode(ev.path).endswith(b"/front/caf\xe9.mp4")


def test_a_bug_in_recording_an_event_never_fails_the_move(tmp_path, caplog):
    with open_store(tmp_path, Clock(), on_uploaded="true") as st:
        def broken(conn, event, raws):
            raise RuntimeError("a bug")
        st.events.record = broken
        upload(st, "a")
        assert st.get("a").state == "uploaded"
    assert "could not record the uploaded event of 1 file(s); the move stands" in caplog.text

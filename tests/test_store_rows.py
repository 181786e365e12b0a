"""Months of rows: the database does not grow for ever, and nothing periodic costs time that grows with it.

Rows of files deleted or archived more than ``[daemon] forget_after`` ago are forgotten, a bounded
batch at a time; the counts per state that ``status``, metrics and systemd's STATUS show are kept
by triggers, exact through every kind of move; and the periodic reads cost the same at any size
(measured in SQLite virtual-machine steps, which do not depend on the machine's speed).
"""
from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import pytest
from helpers import cli, list_keys, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inprocess import running_daemon

from s3_uploader.cli import status_data
from s3_uploader.config import ConfigError, parse_config
from s3_uploader.daemon import Daemon
from s3_uploader.store import STATES, WAITING_STATES, IllegalTransition, Store

DAY = 86400.0
MINIMAL = "[watch]\ndirectory_to_watch = /data\n[s3]\nbucket = b-1\n"


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def counted(store: Store) -> Dict[str, int]:
    """Rows per state, counted the slow way (what ``counts()`` did before schema 3)."""
    out = {s: 0 for s in STATES}
    for state, n in store._read("SELECT state, count(*) FROM files GROUP BY state"):
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
            Daemon(cfg, store=store).forget_old_rows()
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
                except IllegalTransition:  # a move the machine or the schema refuses: that statement only
                    assert store._broken is None
                assert store.counts() == counted(store), f"after {op}"
        finally:
            store.close()


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
                       "DROP INDEX files_gone; UPDATE meta SET value = '2' WHERE name = 'schema_version';")
    conn.close()
    expected = {"pending": 5, "uploading": 1, "uploaded": 0, "failed": 0, "parked": 0, "deleted": 1, "archived": 0}
    # ``status`` before the daemon has opened it since the upgrade: counted the old way, nothing written
    with Store(db, readonly=True) as store:
        assert store.counts() == expected and store.oldest_waiting().state in ("pending", "uploading")
        assert status_data(store)["total"] == 7
    with Store(db, clock=Clock()) as store:
        assert store.meta("schema_version") == "3"
        assert len(list(store.iter_all())) == 7
        assert store.counts() == counted(store) == expected
        store.finish_upload("f0", 1, 1, 1, "m", "m")
        assert store.counts() == counted(store)


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

    store._conn.set_progress_handler(tick, 1)
    try:
        fn()
    finally:
        store._conn.set_progress_handler(None, 0)
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
            oldest = store._read("SELECT path FROM files NOT INDEXED WHERE state IN ('pending', 'uploading', "
                                 "'failed', 'parked') ORDER BY discovered_at LIMIT 1")[0][0]
            assert store.oldest_waiting().rel == oldest.decode()
    small, big = costs
    for what in small:
        # a B-tree one level deeper costs no extra instruction; a few dozen rows' worth of work would
        assert big[what] <= small[what] + 100, f"{what}: {small[what]} steps at 200 rows, {big[what]} at 20,000"


# -- the daemon ----------------------------------------------------------------------------------------

def test_a_running_daemon_forgets_rows_deleted_or_archived_over_forget_after_ago_and_status_shows_it(
        workspace, s3_client, aws_env):
    db = workspace.state / "state.db"
    kept = workspace.inbox / "old" / "kept.mp4"
    kept.parent.mkdir()
    kept.write_bytes(b"still here")
    st = kept.stat()
    with Store(db, clock=lambda: time.time() - 40 * DAY) as store:
        gone(store, "old/deleted.mp4", "deleted")
        gone(store, "old/archived.mp4", "archived")
        # uploaded 40 days ago: forgotten once something else deleted the file (a recorder removing
        # its oldest clips with our cleanup off), kept while the file is there
        for rel, sig in (("old/uploaded.mp4", (1, 1, 1)), ("old/kept.mp4", (st.st_size, st.st_mtime_ns, st.st_ino))):
            store.discover(rel, rel, *sig)
            store.start_upload(rel, *sig)
            store.finish_upload(rel, *sig, "m", "m")
    with Store(db, clock=lambda: time.time() - 10 * DAY) as store:
        gone(store, "recent/deleted.mp4", "deleted")
    workspace.config()  # forget_after at its default, 30 days
    (workspace.inbox / "new.mp4").write_bytes(b"fresh")

    def status() -> Dict[str, int]:
        r = cli("status", "--json", "-c", str(workspace.config_path))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["counts"]

    assert (status()["deleted"], status()["archived"]) == (2, 1)
    with running_daemon(workspace.config_path) as d:
        wait_for(lambda: "new.mp4" in list_keys(s3_client, workspace.bucket), what="new.mp4 uploaded")
        wait_for(lambda: d.store.get("old/deleted.mp4") is None and d.store.get("old/archived.mp4") is None
                 and d.store.get("old/uploaded.mp4") is None,
                 what="the rows deleted, archived or uploaded-and-gone 40 days ago to be forgotten")
        wait_for(lambda: status()["uploaded"] == 2, what="status to show new.mp4 uploaded")
        assert d.store.get("old/kept.mp4").state == "uploaded"
        assert status() == {"pending": 0, "uploading": 0, "uploaded": 2, "failed": 0, "parked": 0, "deleted": 1,
                            "archived": 0}
        assert d.store.get("recent/deleted.mp4").state == "deleted"


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


def test_once_forgets_them_too_so_runs_from_cron_do_not_grow_the_database(workspace, s3_client):
    db = workspace.state / "state.db"
    with Store(db, clock=lambda: time.time() - 40 * DAY) as store:
        gone(store, "old/deleted.mp4", "deleted")
    workspace.config(daemon={"forget_after": "30d"})
    (workspace.inbox / "new.mp4").write_bytes(b"fresh")
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    assert "Forgot 1 row(s) of files deleted or archived over 30 day(s) ago" in r.stderr + r.stdout
    assert "new.mp4" in list_keys(s3_client, workspace.bucket)
    with Store(db, readonly=True) as store:
        assert store.get("old/deleted.mp4") is None and store.counts()["uploaded"] == 1


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

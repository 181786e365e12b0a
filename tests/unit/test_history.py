"""The per-minute history behind the status page's charts: one statement a minute whatever the
uploads, read back in intervals, kept across a restart, pruned after 7 days, added by schema 4."""
from __future__ import annotations

import sqlite3
from typing import Any, List, Sequence

import pytest
from helpers import Clock

from s3_uploader.daemon import Stats
from s3_uploader.history import KEEP_SECONDS, History
from s3_uploader.store import SCHEMA_VERSION, Store

T0 = 1_700_000_400.0  # the start of a minute and of a 10-minute interval (Unix time)


class CountingStore(Store):
    """A real Store that remembers every statement History writes through it."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.written: List[str] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.written.append(sql.split()[0])
        return super().execute(sql, params)


def uploaded(stats: Stats, files: int, nbytes: int) -> None:
    stats.add(uploaded_files=files, uploaded_bytes=nbytes)


def failed(stats: Stats, kind: str = "network") -> None:
    with stats.lock:
        stats.failures[kind] = stats.failures.get(kind, 0) + 1


@pytest.fixture
def clock():
    return Clock(T0 + 5)


@pytest.fixture
def store(tmp_path, clock):
    s = CountingStore(tmp_path / "state.db", clock=clock)
    yield s
    s.close()


def rows(store: Store):
    return store.query("SELECT minute, files, bytes, failures, backlog FROM history_minutes ORDER BY minute")


def test_a_minute_of_uploads_is_one_statement_written_when_the_minute_ends(store, clock):
    stats = Stats()
    h = History(lambda: store, stats, clock)
    h.tick()  # starts counting
    store.discover_many([("w1", "w1", 1, 1, 1), ("w2", "w2", 1, 1, 1)])  # two files waiting
    for i in range(500):  # many uploads and ticks within the minute: nothing written
        uploaded(stats, 1, 1000)
        clock.t = T0 + 5 + i * 0.1
        assert h.tick() is False
    failed(stats)
    failed(stats, "throttled")
    assert store.written == [] and rows(store) == []
    clock.t = T0 + 60.2
    assert h.tick() is True
    assert rows(store) == [(int(T0), 500, 500_000, 2, 2)]
    assert store.written == ["INSERT", "DELETE"]  # the row, and the first prune of the hour
    clock.t = T0 + 120.4  # an idle minute is a row too (a zero, and the backlog): no gap in the charts
    h.tick()
    assert rows(store)[-1] == (int(T0) + 60, 0, 0, 0, 2)
    assert store.written == ["INSERT", "DELETE", "INSERT"]  # pruned at most once an hour


def test_the_chart_sums_intervals_keeps_the_last_backlog_and_shows_the_minute_not_yet_written(store, clock):
    stats = Stats()
    h = History(lambda: store, stats, clock)
    h.tick()
    uploaded(stats, 3, 300)
    clock.t = T0 + 61
    h.tick()  # minute T0: 3 files
    store.discover_many([("w", "w", 1, 1, 1)])
    uploaded(stats, 2, 50)
    failed(stats)
    clock.t = T0 + 121
    h.tick()  # minute T0+60: 2 files, a failure, backlog 1
    uploaded(stats, 4, 4)  # the minute T0+120, not yet written
    c = h.chart("24h")
    assert (c["step"], len(c["points"])) == (600, 144)
    assert c["end"] - c["start"] == 86400 and c["start"] <= clock.t < c["end"]
    now = [p for p in c["points"] if p["t"] == int(T0)]
    assert now == [{"t": int(T0), "files": 9, "bytes": 354, "failures": 1, "backlog": 1}]
    assert c["totals"] == {"files": 9, "bytes": 354, "failures": 1}
    assert all(p["backlog"] is None and p["files"] == 0 for p in c["points"] if p["t"] != int(T0))
    week = h.chart("7d")
    assert (week["step"], len(week["points"])) == (3600, 168) and week["totals"]["files"] == 9
    with pytest.raises(KeyError):
        h.chart("1y")


def test_the_history_survives_a_restart_even_within_the_same_minute(tmp_path, clock):
    stats = Stats()
    with Store(tmp_path / "state.db", clock=clock) as store:
        h = History(lambda: store, stats, clock)
        h.tick()
        uploaded(stats, 2, 20)
        clock.t += 10
        h.flush()  # the daemon's shutdown: the minute so far
    stats = Stats()  # a new process counts from zero
    with Store(tmp_path / "state.db", clock=clock) as store:
        h = History(lambda: store, stats, clock)
        h.tick()
        uploaded(stats, 1, 5)
        clock.t = T0 + 60
        h.tick()
        assert rows(store) == [(int(T0), 3, 25, 0, 0)]  # added to, not replaced
        assert h.chart("24h")["totals"]["files"] == 3


def test_minutes_older_than_seven_days_are_pruned(store, clock):
    stats = Stats()
    h = History(lambda: store, stats, clock)
    for minute in (int(T0) - KEEP_SECONDS - 120, int(T0) - KEEP_SECONDS + 60, int(T0) - 3600):
        store.execute("INSERT INTO history_minutes VALUES(?, 1, 1, 0, 0)", (minute,))
    h.tick()
    clock.t = T0 + 60
    h.tick()
    assert [r[0] for r in rows(store)] == [int(T0) - KEEP_SECONDS + 60, int(T0) - 3600, int(T0)]
    assert h.chart("7d")["totals"]["files"] == 1  # the one within the week's 168 hours


def test_a_failing_database_costs_the_minute_not_the_daemon(store, clock, caplog):
    stats = Stats()
    h = History(lambda: store, stats, clock)
    h.tick()
    store.execute("DROP TABLE history_minutes")  # stands in for a database that refuses the write
    for i in range(1, 4):
        clock.t = T0 + 60 * i
        assert h.tick() is False
    assert len([r for r in caplog.records if "History: cannot write" in r.getMessage()]) == 1


def test_a_schema_3_database_gets_the_history_table_and_keeps_its_rows(tmp_path):
    db = tmp_path / "state.db"
    with Store(db, clock=Clock()) as store:
        store.discover_many([("a", "a", 1, 1, 1)])
    conn = sqlite3.connect(str(db))
    conn.executescript("DROP TABLE history_minutes; UPDATE meta SET value = '3' WHERE name = 'schema_version';")
    conn.close()
    with Store(db, clock=Clock()) as store:
        assert store.meta("schema_version") == str(SCHEMA_VERSION)
        assert store.counts()["pending"] == 1
        assert rows(store) == []

"""Data budgets (budget.py) with an injected wall clock and time zone: the local periods (midnight,
month end, DST changes), the decision, the count across a restart, the gate over a ready queue,
and what status reads back from the store."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple

import pytest

from s3_uploader.budget import (META_STATE, Budget, Periods, StoreLedger, Verdict, budget_note, decide, human_bytes,
                                periods_at, stored_status)
from s3_uploader.order import ReadyHeap
from s3_uploader.scanner import FileStat
from s3_uploader.store import Store
from s3_uploader.uploader import Job

MiB = 1024 * 1024


@pytest.fixture
def tz() -> Iterator[Any]:
    """Set the process's time zone for one test (``tz("Europe/Berlin")``), restored after."""
    if sys.platform == "win32":
        pytest.fail("these tests set TZ with time.tzset, which Windows lacks; the suite runs on Linux")
    before = os.environ.get("TZ")

    def use(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()  # type: ignore[attr-defined,unused-ignore]
    yield use
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()  # type: ignore[attr-defined,unused-ignore]


def local(*fields: int) -> float:
    """Epoch seconds of a local time (y, m, d, H, M) in the current TZ."""
    y, m, d, hh, mm = (list(fields) + [0, 0])[:5]
    return time.mktime((y, m, d, hh, mm, 0, 0, 0, -1))


class Wall:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


class DictLedger:
    """A Ledger in a dict: what a store's meta rows would hold."""

    def __init__(self) -> None:
        self.rows: Dict[str, int] = {}
        self.state: Dict[str, Any] = {}
        self.unparked = 0  # calls of unpark

    def used(self, name: str) -> int:
        return self.rows.get(name, 0)

    def add(self, names: Sequence[str], n: int) -> None:
        for name in names:
            self.rows[name] = self.rows.get(name, 0) + n

    def prune(self, keep: Sequence[str]) -> None:
        self.rows = {k: v for k, v in self.rows.items() if k in keep}

    def save_state(self, state: Dict[str, Any]) -> None:
        self.state = dict(state)

    def unpark(self, now: float) -> int:
        self.unparked += 1
        return 0


def fifo(jobs: Iterable[Job] = ()) -> ReadyHeap[Job]:
    """Ready jobs in the order given (every sort key equal: they keep the order they came in)."""
    return ReadyHeap(lambda j: (0, 0, ""), jobs)


def job(rel: str, size: int, upload_id: Any = None) -> Job:
    return Job(rel, "/x/" + rel, rel, FileStat(rel, size, 1, 1, 1), upload_id=upload_id)


# -- periods -------------------------------------------------------------------------------------
def test_the_day_runs_from_local_midnight_and_the_month_from_the_first(tz):
    tz("Europe/Berlin")
    p = periods_at(local(2026, 11, 30, 23, 59))
    assert (p.day, p.month) == ("2026-11-30", "2026-11")
    assert p.next_day == local(2026, 12, 1) == p.next_month  # the last day of a month: both end at midnight
    q = periods_at(local(2026, 12, 1, 0, 0))
    assert (q.day, q.month) == ("2026-12-01", "2026-12")
    assert q.next_day == local(2026, 12, 2) and q.next_month == local(2027, 1, 1)


def test_december_rolls_over_into_january_of_the_next_year(tz):
    tz("UTC")
    p = periods_at(local(2026, 12, 31, 12))
    assert p.next_day == p.next_month == local(2027, 1, 1)


def test_a_day_is_a_calendar_day_across_the_dst_changes_23_and_25_hours(tz):
    tz("Europe/Berlin")
    spring = periods_at(local(2026, 3, 29, 12))  # clocks go 02:00 -> 03:00
    assert spring.day == "2026-03-29" and spring.next_day - local(2026, 3, 29) == 23 * 3600
    autumn = periods_at(local(2026, 10, 25, 12))  # clocks go 03:00 -> 02:00
    assert autumn.next_day - local(2026, 10, 25) == 25 * 3600
    assert periods_at(autumn.next_day).day == "2026-10-26" and periods_at(autumn.next_day - 1).day == "2026-10-25"


def test_where_dst_begins_at_midnight_the_day_starts_at_the_first_instant_that_exists(tz):
    tz("America/Sao_Paulo")  # 2018-11-04: 00:00 -> 01:00
    p = periods_at(local(2018, 11, 3, 23, 30))
    assert p.next_day > local(2018, 11, 3, 23, 30)
    assert time.localtime(p.next_day)[:4] == (2018, 11, 4, 1)
    assert periods_at(p.next_day).day == "2018-11-04" and periods_at(p.next_day - 1).day == "2018-11-03"


# -- the decision ----------------------------------------------------------------------------------
P = Periods("2026-11-30", "2026-11", 1000.0, 5000.0)


def test_a_file_that_fits_in_both_budgets_goes():
    assert decide(10, (100, 1000), (90, 500), 0, P) == Verdict(True)
    assert decide(10, (0, 0), (10**12, 10**12), 10**12, P).go  # no limit: always


def test_a_file_over_what_is_left_waits_for_the_period_that_holds_it_back():
    assert decide(11, (100, 0), (90, 0), 0, P) == Verdict(False, until=1000.0)
    assert decide(11, (0, 100), (0, 90), 0, P) == Verdict(False, until=5000.0)
    assert decide(11, (100, 100), (90, 90), 0, P) == Verdict(False, until=5000.0)  # both: the later end


def test_a_file_held_back_only_by_uploads_in_flight_waits_for_them_not_for_a_period():
    assert decide(10, (100, 0), (50, 0), 45, P) == Verdict(False)


def test_a_file_larger_than_a_whole_period_can_never_fit():
    assert decide(101, (100, 10**6), (0, 0), 0, P) == Verdict(False, never="day")
    assert decide(101, (0, 100), (0, 0), 0, P) == Verdict(False, never="month")


# -- the count ---------------------------------------------------------------------------------------
def test_charges_count_in_the_day_and_the_month_and_a_new_day_starts_from_zero(tz):
    tz("Europe/Berlin")
    wall, ledger = Wall(local(2026, 11, 30, 23, 0)), DictLedger()
    b = Budget(ledger, 100, 1000, wall=wall)
    b.charge(30)
    b.charge(20)
    assert b.reading().used == (50, 50)
    assert ledger.rows == {"budget:day:2026-11-30": 50, "budget:month:2026-11": 50}
    wall.t = local(2026, 11, 30, 23, 59, ) + 59.5
    b.charge(5)
    assert b.reading().used == (55, 55)
    wall.t = local(2026, 12, 1, 0, 0)  # midnight and a new month: both start again; old rows pruned
    assert b.reading().used == (0, 0)
    b.charge(7)
    assert ledger.rows == {"budget:day:2026-12-01": 7, "budget:month:2026-12": 7}
    wall.t = local(2026, 12, 2, 9, 0)  # a new day in the same month: the month goes on
    b.charge(1)
    assert b.reading().used == (1, 8)


def test_nothing_is_counted_while_no_limit_is_set():
    ledger = DictLedger()
    b = Budget(ledger, wall=Wall(1e9))
    b.charge(10)
    assert not b.active and ledger.rows == {}


def test_a_restart_is_a_new_budget_over_the_same_store_and_goes_on_counting(tmp_path, tz):
    tz("Europe/Berlin")
    wall = Wall(local(2026, 11, 30, 12))
    with Store(tmp_path / "s.db") as store:
        first = Budget(StoreLedger(lambda: store), 100, 0, wall=wall)
        first.charge(60)
        store.commit()
    with Store(tmp_path / "s.db") as store:
        again = Budget(StoreLedger(lambda: store), 100, 0, wall=wall)
        assert again.reading().used == (60, 60)
        ready: ReadyHeap[Job] = fifo([job("big", 50), job("small", 40)])
        handed: List[Job] = []
        again.gate(ready, lambda j: handed.append(j) or True, lambda j, m, t: None)
        assert [j.rel for j in handed] == ["small"] and [j.rel for j in ready] == ["big"]
        wall.t = local(2026, 12, 3, 8)  # days later: the rows of past periods are pruned
        again.charge(1)
        store.commit()
        names = [n for (n,) in store.query("SELECT name FROM meta WHERE name LIKE 'budget:%' ORDER BY name")]
        assert names == ["budget:day:2026-12-03", "budget:month:2026-12", META_STATE]


# -- the gate ------------------------------------------------------------------------------------
def _gate(b: Budget, ready: ReadyHeap[Job], room: int = 100) -> Tuple[List[str], List[Tuple[str, str, float]]]:
    handed: List[str] = []
    parked: List[Tuple[str, str, float]] = []

    def hand(j: Job) -> bool:
        if len(handed) >= room:
            return False
        handed.append(j.rel)
        return True
    b.gate(ready, hand, lambda j, m, t: parked.append((j.rel, m, t)))
    return handed, parked


def test_the_gate_lets_smaller_files_that_fit_go_first_and_keeps_the_rest_in_order(tz, caplog):
    tz("UTC")
    wall = Wall(local(2026, 11, 30, 10))
    b = Budget(DictLedger(), 100, 0, wall=wall)
    b.charge(40)
    ready = fifo([job("a", 30), job("b", 50), job("c", 20), job("d", 25)])
    with caplog.at_level(logging.INFO, logger="s3_uploader.budget"):
        handed, parked = _gate(b, ready)
    assert handed == ["a", "c"] and [j.rel for j in ready] == ["b", "d"] and not parked
    # a and c are reserved until their uploads end: b and d wait for them, not for tomorrow
    r = b.reading()
    assert not r.paused and r.resume_at is None and not caplog.records
    b.release("a")
    b.release("c")
    b.charge(50)  # what a and c sent: 90 of 100 used
    with caplog.at_level(logging.INFO, logger="s3_uploader.budget"):
        handed, _ = _gate(b, ready)
    assert handed == [] and [j.rel for j in ready] == ["b", "d"]
    r = b.reading()
    assert r.paused and r.resume_at == local(2026, 12, 1) and r.waiting == 2
    [line] = [rec.getMessage() for rec in caplog.records]
    assert "90 B of 100 B today ([upload] max_bytes_per_day)" in line
    assert "uploads resume at 2026-12-01 00:00" in line
    assert budget_note(r) is not None and "2026-12-01 00:00" in budget_note(r)  # type: ignore[operator]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="s3_uploader.budget"):
        _gate(b, ready)  # still paused: said once, not at every turn
        assert not caplog.records
        wall.t = local(2026, 12, 1, 0, 0, ) + 1  # midnight: the next hand-over sends them
        handed, _ = _gate(b, ready)
    assert handed == ["b", "d"] and not ready and not b.reading().paused
    assert [rec.getMessage() for rec in caplog.records] == [
        "Upload budget: uploads resume (0 B of 100 B today ([upload] max_bytes_per_day))"]


def test_a_file_larger_than_the_whole_budget_is_parked_with_one_error_naming_the_key(tz):
    tz("UTC")
    wall = Wall(local(2026, 11, 30, 10))
    b = Budget(DictLedger(), 2 * MiB, 0, wall=wall)
    ready = fifo([job("huge.mp4", 3 * MiB), job("ok", 10)])
    handed, parked = _gate(b, ready)
    assert handed == ["ok"] and not ready
    [(rel, message, retry_at)] = parked
    assert rel == "huge.mp4" and "3.0 MiB" in message and "max_bytes_per_day (2.0 MiB)" in message
    assert "raise max_bytes_per_day" in message and retry_at == local(2026, 11, 30, 11)  # within the hour
    wall.t = local(2026, 11, 30, 23, 30)
    _, [(_, _, retry_at)] = _gate(b, fifo([job("huge.mp4", 3 * MiB)]))
    assert retry_at == local(2026, 12, 1)  # or at the next period, when that comes first


def test_a_job_that_fits_when_the_queue_is_full_stays_and_holds_nothing(tz):
    tz("UTC")
    b = Budget(DictLedger(), 100, 0, wall=Wall(local(2026, 11, 30, 10)))
    ready = fifo([job("a", 10), job("b", 10), job("c", 10)])
    handed, _ = _gate(b, ready, room=1)
    assert handed == ["a"] and [j.rel for j in ready] == ["b", "c"]
    b.release("a")
    handed, _ = _gate(b, fifo([job("big", 100)]))
    assert handed == ["big"]  # b and c's failed hand-over reserved nothing


def test_an_open_multipart_upload_is_reserved_for_what_it_has_left_to_send(tz):
    tz("UTC")
    b = Budget(DictLedger(), 100, 0, wall=Wall(local(2026, 11, 30, 10)))
    b.charge(60)
    ready = fifo([job("resumed", 90, upload_id="u1")])
    handed: List[Job] = []
    b.gate(ready, lambda j: handed.append(j) or True, lambda j, m, t: None, sent_before=lambda j: 60)
    assert [j.rel for j in handed] == ["resumed"]


def test_a_reload_takes_effect_at_the_next_hand_over(tz):
    tz("UTC")
    ledger = DictLedger()
    b = Budget(ledger, 100, 0, wall=Wall(local(2026, 11, 30, 10)))
    b.charge(100)
    ready = fifo([job("a", 10)])
    assert _gate(b, ready)[0] == [] and b.reading().paused
    b.configure(200, 0)
    assert _gate(b, ready)[0] == ["a"] and not b.reading().paused
    assert ledger.state["max_bytes_per_day"] == 200 and ledger.state["paused"] is False
    assert ledger.unparked == 1  # raised: files parked as too large are looked at again
    b.configure(150, 0)
    b.configure(150, 5000)  # lowered, then a month limit added: nothing parked can fit better
    assert ledger.unparked == 1
    b.configure(0, 5000)  # the day's limit removed
    assert ledger.unparked == 2


def test_a_single_pass_ends_only_once_nothing_runs_and_nothing_else_is_left(tz):
    tz("UTC")
    b = Budget(DictLedger(), 100, 0, wall=Wall(local(2026, 11, 30, 10)))
    b.charge(95)
    ready = fifo([job("a", 5), job("b", 10)])
    assert _gate(b, ready)[0] == ["a"]
    assert b.reading().paused
    assert not b.ends_pass(True)  # a still runs
    b.release("a")
    assert not b.ends_pass(False)  # files still to look at
    assert b.ends_pass(True)


# -- what status reads -------------------------------------------------------------------------------
def test_status_shows_the_use_of_the_periods_holding_now_and_the_pause_until_it_is_over(tmp_path, tz):
    tz("UTC")
    wall = Wall(local(2026, 11, 30, 10))
    with Store(tmp_path / "s.db") as store:
        assert stored_status(store, wall.t) is None  # never any budget
        b = Budget(StoreLedger(lambda: store), 100, 1000, wall=wall)
        b.charge(100)
        _gate(b, fifo([job("a", 10)]))
        store.commit()
        s = stored_status(store, wall.t)
        assert s is not None and s["paused"] and s["resume_at"] == local(2026, 12, 1) and s["waiting"] == 1
        assert s["resume_at_local"] == "2026-12-01 00:00"
        assert s["day"] == {"period": "2026-11-30", "used": 100, "limit": 100, "left": 0,
                            "next_period_at": local(2026, 12, 1)}
        assert s["month"]["used"] == 100 and s["month"]["left"] == 900
        later = stored_status(store, local(2026, 12, 1, 0, 5))  # the daemon stopped; the day is over
        assert later is not None and not later["paused"] and later["day"]["used"] == 0


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536 * MiB)] == ["0 B", "1023 B", "1.0 KiB", "1.5 GiB"]


# -- the gate in Dispatch.feed ---------------------------------------------------------------------
def _dispatch(tmp_path: Any, day: int):
    import threading

    from s3_uploader.bandwidth import limiter_from_config
    from s3_uploader.config import parse_config
    from s3_uploader.dispatch import Dispatch, InFlight

    root = tmp_path / "in"
    root.mkdir()
    cfg = parse_config(f"[watch]\ndirectory_to_watch = {root}\n[s3]\nbucket = b\n"
                       f"[daemon]\ndb_path = {tmp_path / 's.db'}\n[upload]\nupload_workers = 2\n"
                       f"max_bytes_per_day = {day}\n")
    store = Store(cfg.daemon.db_path)
    budget = Budget(StoreLedger(lambda: store), cfg.upload.max_bytes_per_day, cfg.upload.max_bytes_per_month,
                    wall=Wall(local(2026, 11, 30, 10)))
    dispatch = Dispatch(workers=2, inflight=InFlight(), store=lambda: store, record=lambda o: None,
                        limiter=limiter_from_config(cfg), wake=threading.Event(), abandon=threading.Event(),
                        set_aside=lambda *a, **kw: None, budget=budget)
    return cfg, store, dispatch


def _file_job(cfg: Any, store: Store, rel: str, size: int, small: bool = True) -> Job:
    path = cfg.watch_root / rel
    path.write_bytes(b"x" * size)
    st = os.stat(path)
    store.discover(rel, rel, st.st_size, st.st_mtime_ns, st.st_ino)
    return Job(rel, str(path), rel, FileStat(rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev), small=small)


def test_feed_with_a_budget_sends_what_fits_to_the_workers_and_parks_what_never_can(tmp_path, tz, caplog):
    tz("UTC")
    cfg, store, dispatch = _dispatch(tmp_path, day=100)

    class Sender:  # a sender that would take anything: with a budget in force it must get nothing
        capacity = 4
        got: List[Job] = []

        def backlog(self) -> int:
            return 0

        def submit(self, job: Job) -> bool:
            self.got.append(job)
            return True

    dispatch.sender = Sender()  # type: ignore[assignment]
    with store:
        jobs = [_file_job(cfg, store, "big", 70), _file_job(cfg, store, "small", 40),
                _file_job(cfg, store, "huge", 101), _file_job(cfg, store, "fits", 30)]
        for j in jobs:
            dispatch.inflight.add(j.rel)
        ready: ReadyHeap[Job] = fifo(jobs)
        with caplog.at_level(logging.ERROR):
            dispatch.feed(ready)
        assert Sender.got == []
        assert [dispatch.queue.get_nowait().rel for _ in range(dispatch.queue.qsize())] == ["big", "fits"]
        assert [j.rel for j in ready] == ["small"]  # waits for what is in flight (70 + 30 reserved)
        huge = store.get("huge")
        assert huge is not None and huge.state == "parked" and huge.attempts == 0 and huge.error_kind == "budget"
        assert huge.next_attempt_at == local(2026, 11, 30, 11) and "huge" not in dispatch.inflight
        [line] = [r.getMessage() for r in caplog.records]
        assert line.startswith("Cannot upload huge: larger (101 B) than [upload] max_bytes_per_day (100 B)")
        small = store.get("small")
        assert small is not None and small.state == "pending" and small.attempts == 0  # paused, not failed
        assert dispatch._sender_allowed() is False
        # a file parked for another reason is not the budget's to wake
        store.fail_upload("fits", "invalid", "refused", None, park=True)
        dispatch.budget.configure(100, 0)  # the same limits: nothing to look at again
        assert store.get("huge").next_attempt_at == local(2026, 11, 30, 11)  # type: ignore[union-attr]
        with caplog.at_level(logging.INFO):
            dispatch.budget.configure(200, 0)  # raised by a reload: the parked file may fit now
        huge, fits = store.get("huge"), store.get("fits")
        assert huge is not None and huge.state == "parked" and huge.next_attempt_at == local(2026, 11, 30, 10)
        assert fits is not None and fits.next_attempt_at is None
        assert "1 file(s) parked as too large for the upload budget are looked at again" in caplog.text


def test_a_reload_that_changes_a_budget_key_reconfigures_the_running_budget_at_once(tz):
    from s3_uploader.bandwidth import BandwidthLimiter
    from s3_uploader.config import parse_config
    from s3_uploader.reload import apply_config, merge

    tz("UTC")
    base = "[watch]\ndirectory_to_watch = /data/in\n[s3]\nbucket = b\n[upload]\nmax_bytes_per_day = 1MiB\n"
    running = parse_config(base)
    new, applied, _ = merge(running, parse_config(base.replace("1MiB", "2GiB") + "max_bytes_per_month = 50GiB\n"))
    assert {o.key for o in applied} == {"max_bytes_per_day", "max_bytes_per_month"}

    class Target:
        limiter = BandwidthLimiter()
        budget = Budget(DictLedger(), running.upload.max_bytes_per_day, 0, wall=Wall(local(2026, 11, 30)))
        cfg = running

        def use_config(self, c: Any) -> None:
            self.cfg = c

        def use_watch_settings(self, c: Any) -> None: ...

        def request_rescan(self) -> None: ...

        def wake_scheduler(self) -> None: ...

    t = Target()
    assert t.budget.reading().limits == (MiB, 0)
    apply_config(t, new, applied)
    assert t.budget.reading().limits == (2 * 1024 * MiB, 50 * 1024 * MiB)


def test_while_nothing_changes_a_paused_gate_looks_only_at_new_jobs(tz, monkeypatch):
    import s3_uploader.budget as budget_module

    tz("UTC")
    wall = Wall(local(2026, 11, 30, 10))
    b = Budget(DictLedger(), 100, 0, wall=wall)
    b.charge(95)
    looked: List[int] = []
    real = budget_module.decide
    monkeypatch.setattr(budget_module, "decide", lambda size, *a: looked.append(size) or real(size, *a))
    ready = fifo(job(f"w{i}", 10) for i in range(1000))
    _gate(b, ready)
    assert len(looked) == 1000 and len(ready) == 1000 and b.reading().waiting == 1000
    looked.clear()
    _gate(b, ready)  # a turn of the scheduler with nothing new: nothing looked at again
    assert looked == [] and b.reading().paused and b.reading().waiting == 1000
    ready.append(job("new", 20))
    _gate(b, ready)
    assert looked == [20] and b.reading().waiting == 1001 and list(ready)[-1].rel == "new"
    looked.clear()
    wall.t = local(2026, 12, 1, 0, 0, ) + 1  # a new day: every job is looked at again, and they go
    handed, _ = _gate(b, ready, room=3)
    assert handed == ["w0", "w1", "w2"] and len(looked) == 4  # the fourth fit but the queue was full
    looked.clear()
    _gate(b, ready, room=0)  # a full queue last time: looked at again from the start
    assert len(looked) == 1


def test_a_pass_stopped_by_a_full_queue_does_not_end_a_pause_before_its_time(tz, caplog):
    tz("UTC")
    wall = Wall(local(2026, 11, 30, 10))
    b = Budget(DictLedger(), 100, 0, wall=wall)
    b.charge(60)
    ready = fifo([job("big", 50), job("s1", 5), job("s2", 5)])
    with caplog.at_level(logging.INFO, logger="s3_uploader.budget"):
        assert _gate(b, ready)[0] == ["s1", "s2"] and b.reading().paused
        ready.extend([job("s3", 5), job("s4", 5)])
        assert _gate(b, ready, room=0)[0] == [] and b.reading().paused  # stopped at s3: still paused
        assert len(caplog.records) == 1  # the pause, said once; no resume
        wall.t = local(2026, 12, 1, 0, 1)
        _gate(b, ready, room=0)
    assert not b.reading().paused and caplog.records[-1].getMessage().startswith("Upload budget: uploads resume")


def test_a_new_job_that_sorts_before_the_waiting_ones_is_decided_and_goes_when_it_fits(tz):
    # ready is ordered (order.ReadyHeap): a file found later may sort first (priority, newest); the
    # gate's memory of the jobs it kept must not hold it back unlooked-at
    tz("UTC")
    b = Budget(DictLedger(), 100, 0, wall=Wall(local(2026, 11, 30, 10)))
    b.charge(90)
    ready: ReadyHeap[Job] = ReadyHeap(lambda j: (0 if j.rel.endswith(".jpg") else 1, 0, j.rel),
                                      [job("a.mp4", 50), job("b.mp4", 40)])
    assert _gate(b, ready)[0] == [] and b.reading().waiting == 2
    assert _gate(b, ready)[0] == []  # nothing new: nothing decided, nothing handed
    ready.append(job("snap.jpg", 5))  # sorts before both
    assert _gate(b, ready)[0] == ["snap.jpg"]
    assert [j.rel for j in ready] == ["a.mp4", "b.mp4"] and b.reading().waiting == 2

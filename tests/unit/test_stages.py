"""The stages, discovery, scheduling and recording, built from their collaborators alone (no Daemon):
what each is given is all it needs, and its step can be called on its own.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, List, Tuple

from s3_uploader.bandwidth import limiter_from_config
from s3_uploader.config import parse_config
from s3_uploader.discovery import Discovery
from s3_uploader.dispatch import Dispatch, InFlight
from s3_uploader.keys import Filters, KeyMaker
from s3_uploader.recorder import Recorder
from s3_uploader.remote import PutOptions
from s3_uploader.retry import Failure
from s3_uploader.runmode import RunMode
from s3_uploader.scheduler import Scheduler
from s3_uploader.scanner import FileStat, Scanner
from s3_uploader.store import Store
from s3_uploader.uploader import Job, Outcome, Settings
from s3_uploader.views import Stats
from s3_uploader.watcher import Hints
from s3_uploader.writers import WriterProbe

from helpers import SimpleLive, wait_for


def _config(tmp_path: Any, watch: str = "") -> Any:
    root = tmp_path / "in"
    root.mkdir()
    return parse_config(f"[watch]\ndirectory_to_watch = {root}\n{watch}[s3]\nbucket = b\n"
                        f"[daemon]\ndb_path = {tmp_path / 's.db'}\n"
                        "[upload]\nmax_retries = 3\nretry_backoff_base = 10s\nretry_backoff_max = 60s\n")


def test_discovery_alone_queues_a_new_file_and_forgets_the_waiting_row_of_a_vanished_one(tmp_path):
    cfg = _config(tmp_path)
    (cfg.watch_root / "new.txt").write_bytes(b"new")
    filters = Filters()
    scanner = Scanner(cfg.watch_root, filters)
    candidates: "queue.Queue[FileStat]" = queue.Queue(maxsize=10)
    set_aside: List[Tuple[Any, ...]] = []
    with Store(cfg.daemon.db_path, clock=lambda: 100.0) as store:  # rows found before the scan (at 1e9)
        store.discover("gone.txt", "gone.txt", 3, 1, 1)  # waiting, its file long gone
        disc = Discovery(
            str(cfg.watch_root), live=SimpleLive(cfg, store, scanner, filters, KeyMaker("")), candidates=candidates,
            folder_requests=queue.Queue(), scan_request=threading.Event(), stop=threading.Event(),
            wake=threading.Event(), scan_done=threading.Event(), stats=Stats(), heartbeats={},
            is_inflight=lambda rel: False, set_aside=lambda *a, **kw: set_aside.append(a),
            watching=lambda: False, mode=RunMode.ONCE, clock=lambda: 0.0, wall=lambda: 1e9)
        assert disc.full_scan() == 1
        assert candidates.get_nowait().rel == "new.txt" and candidates.empty()
        row = store.get("new.txt")
        assert row is not None and row.state == "pending" and row.key == "new.txt"
        assert store.get("gone.txt") is None
        assert disc.stats.scans == 1
        assert not set_aside


def test_recorder_alone_counts_an_upload_and_schedules_a_failure_for_its_retry(tmp_path):
    cfg = _config(tmp_path)
    stats = Stats()
    wake = threading.Event()
    inflight = InFlight({"a.txt", "b.txt"})
    let_go: List[str] = []
    with Store(cfg.daemon.db_path) as store:
        rec = Recorder("(test)", config=lambda: cfg, store=lambda: store, stats=stats, hints=Hints(),
                       inflight=inflight, wake=wake, sender=lambda: None,
                       has_ready=lambda: False, let_go=let_go.append, mode=RunMode.SERVICE,
                       clock=lambda: 0.0, wall=lambda: 1000.0)
        jobs = {}
        for rel in ("a.txt", "b.txt"):
            store.discover(rel, rel, 3, 1, 1)
            jobs[rel] = Job(rel, str(cfg.watch_root / rel), rel, FileStat(rel, 3, 1, 1, 0), attempt=1)
        rec.record_many([Outcome("uploaded", jobs["a.txt"], md5="m", etag="m", seconds=0.5),
                         Outcome("failed", jobs["b.txt"], failure=Failure("server", "500 from the server"))])
        a, b = store.get("a.txt"), store.get("b.txt")
        assert a is not None and a.state == "uploaded"
        assert b is not None and b.state == "failed" and b.error_kind == "server"
        assert b.next_attempt_at is not None and 1000.0 < b.next_attempt_at <= 1060.0
        assert stats.uploaded_files == 1 and stats.uploaded_bytes == 3 and stats.upload_seconds == [0.5]
        assert stats.failures == {"server": 1} and stats.retries == 1
        assert not inflight, "recorded files leave inflight"
        assert wake.is_set(), "a failure wakes the scheduler to schedule its retry"
        assert not let_go


def test_scheduler_alone_makes_a_job_of_a_file_only_after_stable_seconds_of_an_unchanged_signature(tmp_path):
    cfg = _config(tmp_path, "stable_seconds = 10s\nstable_checks = 2\n")
    path = cfg.watch_root / "a.txt"
    path.write_bytes(b"first")
    now = [0.0]  # the fake clock: only run_once's argument and this move it
    filters = Filters()
    scanner = Scanner(cfg.watch_root, filters)
    keymaker = KeyMaker("")
    candidates: "queue.Queue[FileStat]" = queue.Queue(maxsize=10)
    hints = Hints()
    inflight = InFlight()
    probe = WriterProbe(str(cfg.watch_root), clock=lambda: now[0])
    set_aside: List[Tuple[Any, ...]] = []
    stop, wake, scan_request, scan_done = (threading.Event() for _ in range(4))
    with Store(cfg.daemon.db_path, clock=lambda: 1e9) as store:
        live = SimpleLive(cfg, store, scanner, filters, keymaker, probe=probe, settings=Settings(
            cfg.upload.multipart_threshold, cfg.upload.multipart_chunksize, cfg.upload.max_concurrency,
            PutOptions(), False))
        disc = Discovery(
            str(cfg.watch_root), live=live, candidates=candidates,
            folder_requests=queue.Queue(), scan_request=scan_request, stop=stop, wake=wake, scan_done=scan_done,
            stats=Stats(), heartbeats={}, is_inflight=lambda rel: rel in inflight,
            set_aside=lambda *a, **kw: set_aside.append(a), watching=lambda: False, mode=RunMode.SERVICE,
            clock=lambda: now[0], wall=lambda: 1e9)
        dispatch = Dispatch(workers=cfg.upload.upload_workers, inflight=inflight, store=lambda: store,
                            record=lambda o: None, limiter=limiter_from_config(cfg), wake=wake,
                            abandon=threading.Event(), set_aside=lambda *a, **kw: set_aside.append(a))
        upload_q = dispatch.queue
        sched = Scheduler(
            cfg.upload.max_pending_uploads, live=live, dispatch=dispatch, candidates=candidates, hints=hints, wake=wake, stop=stop,
            scan_request=scan_request, scan_done=scan_done,
            heartbeats={}, discovery=disc,
            set_aside=lambda *a, **kw: set_aside.append(a), mode=RunMode.SERVICE, request_stop=stop.set,
            run_cleanup_pass=lambda: None, clock=lambda: now[0], wall=lambda: 1e9)

        def turn(at: float) -> float:
            now[0] = at
            return sched.run_once(at)

        hints.add("a.txt")  # an event: the file is found (its row made) and checked at once
        assert 0.0 < turn(0.0) <= 1.0
        row = store.get("a.txt")
        assert row is not None and row.state == "pending"
        assert "a.txt" in sched.tracker and upload_q.empty() and not inflight
        path.write_bytes(b"second, longer")  # still being written: its signature changes
        for at in (5.0, 9.99, 10.0, 15.0, 19.99):  # the check at 10 sees the change and starts again
            turn(at)
            assert upload_q.empty() and "a.txt" in sched.tracker, f"a job before it was stable, at {at}"
        turn(20.0)  # 10 s since the signature was last seen to change, two checks agreeing
        job = upload_q.get_nowait()
        assert job.rel == "a.txt" and job.key == "a.txt" and job.stat.size == len(b"second, longer")
        assert "a.txt" not in sched.tracker and "a.txt" in inflight and len(inflight) == 1 and sched.held() == 0
        assert not set_aside and not stop.is_set()


def _order_config(tmp_path: Any, upload: str) -> Any:
    root = tmp_path / "in"
    root.mkdir()
    return parse_config(f"[watch]\ndirectory_to_watch = {root}\nstable_seconds = 0\nstable_checks = 1\n"
                        f"[s3]\nbucket = b\n[daemon]\ndb_path = {tmp_path / 's.db'}\n[upload]\n{upload}")


def _write(root: Any, rel: str, mtime: int) -> None:
    import os
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(rel.encode())
    os.utime(p, (mtime, mtime))


def test_a_rescan_records_every_folder_first_then_hands_the_backlog_on_in_upload_order(tmp_path):
    cfg = _order_config(tmp_path, "order = newest\npriority = *.jpg\n")
    for rel, mtime in [("a/1.mp4", 100), ("a/2.jpg", 50), ("b/3.mp4", 300), ("b/4.jpg", 60), ("c/5.mp4", 200)]:
        _write(cfg.watch_root, rel, mtime)
    filters = Filters()
    scanner = Scanner(cfg.watch_root, filters)
    candidates: "queue.Queue[FileStat]" = queue.Queue(maxsize=100)
    with Store(cfg.daemon.db_path, clock=lambda: 100.0) as store:
        store.discover("z/old.mp4", "z/old.mp4", 1, 400 * 10**9, 1)  # waiting from an earlier run
        _write(cfg.watch_root, "z/old.mp4", 400)
        inflight = {"c/5.mp4"}  # an upload holds it: not handed on again
        disc = Discovery(
            str(cfg.watch_root), live=SimpleLive(cfg, store, scanner, filters, KeyMaker("")), candidates=candidates,
            folder_requests=queue.Queue(), scan_request=threading.Event(), stop=threading.Event(),
            wake=threading.Event(), scan_done=threading.Event(), stats=Stats(), heartbeats={},
            is_inflight=lambda rel: rel in inflight, set_aside=lambda *a, **kw: None,
            watching=lambda: False, mode=RunMode.ONCE, clock=lambda: 0.0, wall=lambda: 1e9)
        disc.full_scan()
        got = []
        while not candidates.empty():
            got.append(candidates.get_nowait())
        # the snapshots first (newest first), then the rest newest first, the earlier run's row included
        assert [f.rel for f in got] == ["b/4.jpg", "a/2.jpg", "z/old.mp4", "b/3.mp4", "a/1.mp4"]
        assert [f.mtime_ns for f in got] == [60 * 10**9, 50 * 10**9, 400 * 10**9, 300 * 10**9, 100 * 10**9]


def test_a_file_ready_later_with_a_better_place_is_handed_over_before_the_ready_files_it_overtakes(tmp_path):
    cfg = _order_config(tmp_path, "upload_workers = 1\npriority = *.jpg\n")
    for rel, mtime in [("c.mp4", 30), ("a.mp4", 10), ("d.mp4", 40), ("b.mp4", 20)]:
        _write(cfg.watch_root, rel, mtime)
    filters = Filters()
    scanner = Scanner(cfg.watch_root, filters)
    candidates: "queue.Queue[FileStat]" = queue.Queue(maxsize=10)
    hints = Hints()
    inflight = InFlight()
    stop, wake, scan_request, scan_done = (threading.Event() for _ in range(4))
    with Store(cfg.daemon.db_path, clock=lambda: 1e9) as store:
        live = SimpleLive(cfg, store, scanner, filters, KeyMaker(""), probe=WriterProbe(str(cfg.watch_root)),
                          settings=Settings(cfg.upload.multipart_threshold, cfg.upload.multipart_chunksize,
                                            cfg.upload.max_concurrency, PutOptions(), False))
        disc = Discovery(
            str(cfg.watch_root), live=live, candidates=candidates, folder_requests=queue.Queue(),
            scan_request=scan_request, stop=stop, wake=wake, scan_done=scan_done, stats=Stats(), heartbeats={},
            is_inflight=lambda rel: rel in inflight, set_aside=lambda *a, **kw: None, watching=lambda: False,
            mode=RunMode.SERVICE, clock=lambda: 0.0, wall=lambda: 1e9)
        dispatch = Dispatch(workers=1, inflight=inflight, store=lambda: store, record=lambda o: None,
                            limiter=limiter_from_config(cfg), wake=wake, abandon=threading.Event(),
                            set_aside=lambda *a, **kw: None)
        sched = Scheduler(
            10, live=live, dispatch=dispatch, candidates=candidates, hints=hints, wake=wake, stop=stop,
            scan_request=scan_request, scan_done=scan_done, heartbeats={}, discovery=disc,
            set_aside=lambda *a, **kw: None, mode=RunMode.SERVICE, request_stop=stop.set,
            run_cleanup_pass=lambda: None, clock=lambda: 0.0, wall=lambda: 1e9)
        for rel in ("c.mp4", "a.mp4", "d.mp4", "b.mp4"):  # events, in no particular order
            hints.add(rel)
        sched.run_once(0.0)
        # all four ready in one turn: the upload queue (two jobs for one worker) takes the oldest two
        assert [dispatch.queue.get_nowait().rel for _ in range(2)] == ["a.mp4", "b.mp4"]
        assert [j.rel for j in sched.ready] == ["c.mp4", "d.mp4"]
        _write(cfg.watch_root, "snap.jpg", 99)  # newer than every clip, but it matches priority
        hints.add("snap.jpg")
        sched.run_once(1.0)
        assert [dispatch.queue.get_nowait().rel for _ in range(2)] == ["snap.jpg", "c.mp4"]
        assert [j.rel for j in sched.ready] == ["d.mp4"]
        assert store.get("snap.jpg").state == "pending"


def test_waiting_rows_are_ranked_again_at_the_first_scan_and_after_the_priority_changes_only(tmp_path):
    cfg = _order_config(tmp_path, "")
    for rel, mtime in [("a.mp4", 10), ("b.jpg", 20)]:
        _write(cfg.watch_root, rel, mtime)
    filters = Filters()
    scanner = Scanner(cfg.watch_root, filters)
    candidates: "queue.Queue[FileStat]" = queue.Queue(maxsize=100)
    with Store(cfg.daemon.db_path, clock=lambda: 100.0) as store:
        live = SimpleLive(cfg, store, scanner, filters, KeyMaker(""))
        disc = Discovery(
            str(cfg.watch_root), live=live, candidates=candidates, folder_requests=queue.Queue(),
            scan_request=threading.Event(), stop=threading.Event(), wake=threading.Event(),
            scan_done=threading.Event(), stats=Stats(), heartbeats={}, is_inflight=lambda rel: False,
            set_aside=lambda *a, **kw: None, watching=lambda: False, mode=RunMode.SERVICE,
            clock=lambda: 0.0, wall=lambda: 1e9)
        calls: List[int] = []
        rerank = store.rerank
        store.rerank = lambda ranker, lowest: calls.append(lowest) or rerank(ranker, lowest)  # type: ignore

        def scan() -> List[str]:
            disc.full_scan(quick=True)
            out = []
            while not candidates.empty():
                out.append(candidates.get_nowait().rel)
            return out

        assert scan() == ["a.mp4", "b.jpg"] and calls == [0]
        assert scan() == ["a.mp4", "b.jpg"] and calls == [0]  # nothing changed: no statement
        live.cfg = parse_config(f"[watch]\ndirectory_to_watch = {cfg.watch_root}\n[s3]\nbucket = b\n"
                                f"[daemon]\ndb_path = {cfg.daemon.db_path}\n[upload]\npriority = *.jpg\n")  # a reload
        assert scan() == ["b.jpg", "a.mp4"] and calls == [0, 1]  # the reload's priority: ranked again
        assert scan() == ["b.jpg", "a.mp4"] and calls == [0, 1]


def test_a_folder_created_while_the_queue_stays_full_is_listed_and_recorded_not_held_behind_the_backlog(tmp_path):
    # uploads paused (a data budget, a slow link): the scheduler takes nothing and the queue stays
    # full. The backlog's feed must make way for a folder events report, whose files get their rows
    # now (status counts them, the order covers them), and be fed again, in order, afterwards
    cfg = _order_config(tmp_path, "")
    for i in range(5):
        _write(cfg.watch_root, f"a/{i}.mp4", 100 + i)
    scanner = Scanner(cfg.watch_root, Filters())
    candidates: "queue.Queue[FileStat]" = queue.Queue(maxsize=2)
    folder_requests: "queue.Queue[str]" = queue.Queue()
    stop = threading.Event()
    with Store(cfg.daemon.db_path, clock=lambda: 100.0) as store:
        disc = Discovery(
            str(cfg.watch_root), live=SimpleLive(cfg, store, scanner, Filters(), KeyMaker("")),
            candidates=candidates, folder_requests=folder_requests, scan_request=threading.Event(), stop=stop,
            wake=threading.Event(), scan_done=threading.Event(), stats=Stats(), heartbeats={},
            is_inflight=lambda rel: False, set_aside=lambda *a, **kw: None, watching=lambda: False,
            mode=RunMode.SERVICE, clock=lambda: 0.0, wall=lambda: 1e9)
        for i in range(5):  # the walk recorded them (no feed yet)
            disc.diff_folder("a", [scanner.stat_one(f"a/{i}.mp4")], hand_on=False)  # type: ignore[list-item]
        feeding = threading.Thread(target=disc.feed_backlog, name="test-feed")
        feeding.start()
        try:
            wait_for(lambda: candidates.full(), what="the queue to fill")
            _write(cfg.watch_root, "b/new.jpg", 50)
            folder_requests.put("b")
            feeding.join(10)
            assert not feeding.is_alive(), "the feed did not make way for the folder asked for"
            disc._scan_requested_folders()
            rec = store.get("b/new.jpg")
            assert rec is not None and rec.state == "pending"  # recorded though the queue is still full
            assert disc._feed_due
        finally:
            stop.set()
            feeding.join(10)
        stop.clear()
        while not candidates.empty():
            candidates.get_nowait()  # the scheduler makes room
        candidates.maxsize = 0  # (unbounded now: the whole order is seen)
        disc.feed_backlog()
        got = [candidates.get_nowait().rel for _ in range(candidates.qsize())]
        assert got == ["b/new.jpg"] + [f"a/{i}.mp4" for i in range(5)]  # oldest first, the new folder's included

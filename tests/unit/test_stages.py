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

from helpers import SimpleLive


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

"""The first two stages, discovery and recording, built from their collaborators alone (no Daemon):
what each is given is all it needs, and its step can be called on its own.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, List, Tuple

from s3_uploader.config import parse_config
from s3_uploader.daemon import Stats
from s3_uploader.discovery import Discovery
from s3_uploader.keys import Filters, KeyMaker
from s3_uploader.recorder import Recorder
from s3_uploader.retry import Failure
from s3_uploader.scanner import FileStat, Scanner
from s3_uploader.store import Store
from s3_uploader.uploader import Job, Outcome
from s3_uploader.watcher import Hints


def _config(tmp_path: Any) -> Any:
    root = tmp_path / "in"
    root.mkdir()
    return parse_config(f"[watch]\ndirectory_to_watch = {root}\n[s3]\nbucket = b\n"
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
            str(cfg.watch_root), config=lambda: cfg, store=lambda: store, scanner=lambda: scanner,
            filters=lambda: filters, keymaker=lambda: KeyMaker(""), candidates=candidates,
            folder_requests=queue.Queue(), scan_request=threading.Event(), stop=threading.Event(),
            wake=threading.Event(), scan_done=threading.Event(), stats=Stats(), heartbeats={},
            is_inflight=lambda rel: False, set_aside=lambda *a, **kw: set_aside.append(a),
            watching=lambda: False, once=True, clock=lambda: 0.0, wall=lambda: 1e9)
        assert disc.full_scan() == 1
        assert candidates.get_nowait().rel == "new.txt" and candidates.empty()
        row = store.get("new.txt")
        assert row is not None and row.state == "pending" and row.key == "new.txt"
        assert store.get("gone.txt") is None
        assert disc.stats.scans == 1 and disc.stats.last_scan_files == 1
        assert not set_aside


def test_recorder_alone_counts_an_upload_and_schedules_a_failure_for_its_retry(tmp_path):
    cfg = _config(tmp_path)
    stats = Stats()
    wake = threading.Event()
    inflight = {"a.txt", "b.txt"}
    set_aside: List[Tuple[Any, ...]] = []
    with Store(cfg.daemon.db_path) as store:
        rec = Recorder("(test)", config=lambda: cfg, store=lambda: store, stats=stats, hints=Hints(),
                       inflight=inflight, inflight_lock=threading.Lock(), wake=wake, sender=lambda: None,
                       has_ready=lambda: False, set_aside=lambda *a, **kw: set_aside.append(a), once=False,
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
        assert not set_aside

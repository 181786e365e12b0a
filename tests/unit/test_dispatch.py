"""Dispatch on a MemoryRemote: the in-flight set, the routing with its feed limit, the upload workers
recording what they send, and the drain that drops jobs not started and stops the workers."""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Any, Deque

from helpers import wait_for

from s3_uploader.bandwidth import limiter_from_config
from s3_uploader.config import parse_config
from s3_uploader.dispatch import Dispatch, InFlight
from s3_uploader.recorder import Recorder
from s3_uploader.remote import MemoryRemote, PutOptions
from s3_uploader.runmode import RunMode
from s3_uploader.scanner import FileStat
from s3_uploader.store import Store
from s3_uploader.threads import Threads
from s3_uploader.retry import Failure
from s3_uploader.uploader import Job, Outcome, Settings
from s3_uploader.views import Stats
from s3_uploader.watcher import Hints


def test_in_flight_is_one_set_asked_through_its_methods():
    inflight = InFlight(["a"])
    assert "a" in inflight and len(inflight) == 1 and inflight
    inflight.add("b")
    inflight.discard("a", "b", "never-there")
    assert not inflight and "a" not in inflight


def _world(tmp_path: Any, workers: int = 2):
    root = tmp_path / "in"
    root.mkdir()
    cfg = parse_config(f"[watch]\ndirectory_to_watch = {root}\n[s3]\nbucket = b\n"
                       f"[daemon]\ndb_path = {tmp_path / 's.db'}\n[upload]\nupload_workers = {workers}\n")
    store = Store(cfg.daemon.db_path)
    inflight, wake, set_aside = InFlight(), threading.Event(), []  # type: ignore[var-annotated]
    recorder = Recorder("(test)", config=lambda: cfg, store=lambda: store, stats=Stats(), hints=Hints(),
                        inflight=inflight, wake=wake, sender=lambda: None, has_ready=lambda: False,
                        let_go=lambda rel: None, mode=RunMode.SERVICE, clock=time.monotonic, wall=time.time)
    dispatch = Dispatch(workers=workers, inflight=inflight, store=lambda: store, record=recorder.record,
                        limiter=limiter_from_config(cfg), wake=wake, abandon=threading.Event(),
                        set_aside=lambda *a, **kw: set_aside.append(a))
    return cfg, store, dispatch, set_aside


def _job(cfg: Any, store: Store, rel: str, data: bytes) -> Job:
    path = cfg.watch_root / rel
    path.write_bytes(data)
    st = os.stat(path)
    store.discover(rel, rel, st.st_size, st.st_mtime_ns, st.st_ino)
    return Job(rel, str(path), rel, FileStat(rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev))


def test_without_a_sender_jobs_go_to_the_queue_in_order_up_to_twice_the_workers(tmp_path):
    cfg, store, dispatch, _ = _world(tmp_path, workers=2)
    with store:
        ready: Deque[Job] = collections.deque(_job(cfg, store, f"f{i}", b"x") for i in range(6))
        dispatch.feed(ready)
        assert dispatch.full() and dispatch.queued() == 4 and len(ready) == 2
        assert [dispatch.queue.get_nowait().rel for _ in range(4)] == ["f0", "f1", "f2", "f3"]
        assert not dispatch.full() and dispatch.idle()


def test_workers_upload_and_record_each_job_then_the_drain_stops_them(tmp_path):
    cfg, store, dispatch, set_aside = _world(tmp_path)
    remote = MemoryRemote()
    threads = Threads(on_failure=lambda name, exc: set_aside.append((name, exc)))
    with store:
        store.start()
        settings = Settings(cfg.upload.multipart_threshold, cfg.upload.multipart_chunksize,
                            cfg.upload.max_concurrency, PutOptions(), False)
        dispatch.build(remote, store, lambda: settings, max_concurrency=1, clock=time.monotonic,
                       record_many=lambda outcomes: None)
        assert dispatch.sender is None  # a MemoryRemote has no asyncio transport
        dispatch.start(threads.spawn)
        jobs = [_job(cfg, store, f"f{i}.txt", f"data {i}".encode()) for i in range(3)]
        for job in jobs:
            dispatch.inflight.add(job.rel)
        dispatch.feed(collections.deque(jobs))
        wait_for(dispatch.idle, what="the workers to finish")
        assert {k: v[0] for k, v in remote.objects.items()} == {f"f{i}.txt": f"data {i}".encode() for i in range(3)}
        store.commit()
        assert all(store.get(j.rel).state == "uploaded" for j in jobs)  # type: ignore[union-attr]
        dispatch.drain(time.monotonic() + 5, threads, second_signal=lambda: None)
        assert threads.left_behind == [] and not any(t.is_alive() for t in threads.named("upload-0", "upload-1"))
        assert not set_aside
        assert dispatch.uploader is not None
        dispatch.uploader.close(timeout=1.0)


def test_the_drain_drops_jobs_not_started_which_stay_pending_for_the_next_start(tmp_path):
    cfg, store, dispatch, _ = _world(tmp_path)
    with store:
        for rel in ("a.txt", "b.txt"):
            dispatch.inflight.add(rel)
            dispatch.queue.put(_job(cfg, store, rel, b"x"))
        dispatch.drain(time.monotonic() + 5, Threads(on_failure=lambda name, exc: None), second_signal=lambda: None)
        assert not dispatch.inflight and dispatch.queue.empty() and dispatch.idle()
        rows = [store.get(rel) for rel in ("a.txt", "b.txt")]
        assert [r.state for r in rows if r is not None] == ["pending", "pending"]


def test_a_job_the_closed_sender_refuses_stays_ready_and_nothing_raises(tmp_path):
    """Shutdown closes the sender while the scheduler may still turn (seen after a full disk): feed
    keeps the job in ``ready`` (its row stays pending for the next start) instead of dying."""
    cfg, store, dispatch, _ = _world(tmp_path)

    class Closed:
        capacity = 4

        def backlog(self) -> int:
            return 0

        def submit(self, job: Job) -> bool:
            return False  # what AsyncSender.submit answers once close() was called

    dispatch.sender = Closed()  # type: ignore[assignment]
    ready: Deque[Job] = collections.deque([_job(cfg, store, "a.jpg", b"a")._replace(small=True)])
    dispatch.feed(ready)
    assert [j.rel for j in ready] == ["a.jpg"] and dispatch.queue.empty()
    store.close()


def test_a_failure_recorded_after_the_rescan_forgot_the_vanished_file_is_no_bug(tmp_path, caplog):
    # the race the model test found: the rescan's sweep checks the file is not in flight, the
    # scheduler hands it to an upload, the sweep finds it gone and forgets its row, the upload fails
    cfg, store, dispatch, _ = _world(tmp_path)
    with store:
        job = _job(cfg, store, "gone.txt", b"x")
        store.forget("gone.txt")
        recorder = dispatch._record.__self__  # type: ignore[attr-defined]
        with caplog.at_level(logging.INFO):
            recorder.record(Outcome("failed", job, failure=Failure("server", "injected")))
        assert store.get("gone.txt") is None
        assert "after its file was found gone; nothing to retry: gone.txt" in caplog.text

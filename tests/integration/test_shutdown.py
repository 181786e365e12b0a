"""Ordered, bounded shutdown: whatever the link or the threads do, a stop signal ends in a final
commit and an exit within ``shutdown_timeout`` plus a few seconds, and nothing it gave up on is lost."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from helpers import get_bytes, make_files, recorded_parts, wait_for
from s3_uploader.config import load_config
from s3_uploader.daemon import Daemon
from s3_uploader.store import Store

MiB = 1024 * 1024

RESUMABLE = {"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB", "max_concurrency": 1,
             "upload_workers": 1}

# what the whole stop may take beyond shutdown_timeout (README, Shutdown: "plus about 5 seconds")
SLACK = 5.0





def start_with_part_two_held(workspace, proxy, size: int):
    """A daemon sending one multipart file through ``proxy``: part 1 recorded, part 2 held in flight."""
    proxy.hold("UploadPart", part_number=2)
    d = workspace.start()
    db = workspace.state / "state.db"
    d.wait_until(lambda: proxy.held() == 1 and recorded_parts(db) == 1, timeout=60,
                 what="part 1 recorded and part 2 in flight",
                 context=lambda: "\n".join(map(repr, proxy.select())))
    return d


def stop_and_time(d, sig_count: int = 1, limit: float = 60.0) -> float:
    """Send SIGTERM (``sig_count`` times, the later ones once the drain has begun); the seconds until
    the process exited. Fails (TimeoutExpired) when it does not exit within ``limit``."""
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    if sig_count > 1:
        d.wait_log(r"Received SIGTERM: stopping")
        d.signal(signal.SIGTERM)
    d.proc.wait(limit)
    return time.monotonic() - t0


def test_a_part_in_flight_at_the_deadline_is_abandoned_and_the_upload_resumes_at_the_next_start(
        workspace, proxy, s3_client):
    data = os.urandom(20 * MiB)
    (workspace.inbox / "big.bin").write_bytes(data)
    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload=RESUMABLE, daemon={"shutdown_timeout": "2s"})
    d = start_with_part_two_held(workspace, proxy, len(data))
    took = stop_and_time(d, limit=2 + 20)  # today's code waits for the held part forever
    out = d.output()
    assert d.proc.returncode == 0, out[-3000:]
    assert took < 2 + SLACK, f"shutdown took {took:.1f}s with shutdown_timeout 2s"
    assert "Shutdown timeout: abandoning uploads in flight" in out
    assert "left behind, still running: part-0" in out  # the part's request, not waited for
    assert "Stopped" in out
    d.close()
    proxy.release(drop=True)  # the held part never reaches S3

    d = workspace.start()
    d.wait_log(r"Successfully uploaded big\.bin", timeout=90)
    assert "Resuming multipart upload of big.bin: 1 of 4 parts already in S3" in d.output()
    assert get_bytes(s3_client, workspace.bucket, "big.bin") == data
    assert s3_client.list_multipart_uploads(Bucket=workspace.bucket).get("Uploads", []) == []
    assert d.stop() == 0


def test_a_second_stop_signal_ends_the_drain_at_once(workspace, proxy, s3_client):
    data = os.urandom(20 * MiB)
    (workspace.inbox / "big.bin").write_bytes(data)
    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload=RESUMABLE, daemon={"shutdown_timeout": "60s"})
    d = start_with_part_two_held(workspace, proxy, len(data))
    took = stop_and_time(d, sig_count=2, limit=30)
    out = d.output()
    assert d.proc.returncode == 0, out[-3000:]
    assert took < SLACK + 2, f"shutdown took {took:.1f}s after a second SIGTERM (shutdown_timeout 60s)"
    assert "Received SIGTERM: stopping (again to skip waiting for uploads)" in out
    assert "Received SIGTERM again: abandoning uploads in flight" in out
    d.close()
    proxy.release(drop=True)
    # nothing was lost: the upload id and part 1 are kept, and the next start completes the object
    d = workspace.start()
    d.wait_log(r"Successfully uploaded big\.bin", timeout=90)
    assert "Resuming multipart upload of big.bin: 1 of 4 parts already in S3" in d.output()
    assert get_bytes(s3_client, workspace.bucket, "big.bin") == data
    assert d.stop() == 0


# -- in-process: threads that will not stop, steps that fail ----------------------------------------------

def _daemon(workspace, **daemon_cfg) -> Daemon:
    workspace.config(watch={"use_events": "false"}, daemon={"shutdown_timeout": "1s", **daemon_cfg})
    return Daemon(load_config(workspace.config_path))


def _run_on_thread(d: Daemon):
    result = {}

    def main():
        try:
            result["exit"] = d.run()
        except BaseException as exc:  # reported by the test
            result["error"] = exc
    t = threading.Thread(target=main, name="daemon-main")
    t.start()
    return t, result


def test_a_thread_that_does_not_stop_is_named_and_left_behind_and_the_final_commit_still_happens(
        workspace, aws_env, caplog):
    make_files(workspace.inbox, [("a.txt", b"a" * 100)])
    d = _daemon(workspace)
    first = threading.Event()
    stuck = threading.Event()
    release = threading.Event()
    real_walk = d.scanner.walk

    def walk(*args, **kw):  # the first scan goes through; the second hangs, as on a dead network share
        if first.is_set():
            stuck.set()
            release.wait(60)
            return
        first.set()
        yield from real_walk(*args, **kw)
    d.scanner.walk = walk
    t, result = _run_on_thread(d)
    try:
        wait_for(lambda: d.stats.uploaded_files == 1 and d.stats.scans >= 1, what="a.txt uploaded")
        d.scan_request.set()  # the next scan starts, and hangs
        wait_for(stuck.is_set, what="the second scan to hang")
        with caplog.at_level(logging.INFO, logger="s3_uploader"):
            t0 = time.monotonic()
            d.request_stop()
            t.join(1 + SLACK + 5)
            took = time.monotonic() - t0
            assert not t.is_alive(), "shutdown waited for the stuck scanner"
        assert result == {"exit": 0}
        assert took < 1 + SLACK, f"shutdown took {took:.1f}s"
        assert "stopping intake: left behind, still running: scanner" in caplog.text
        assert d.left_behind == ["scanner"]
        with Store(workspace.state / "state.db", readonly=True) as st:  # the final commit
            assert st.counts()["uploaded"] == 1
    finally:
        release.set()
        t.join(60)


def test_shutdown_steps_all_run_and_the_first_error_decides_the_exit_code(workspace, aws_env, caplog):
    from s3_uploader.embedded import free_port
    make_files(workspace.inbox, [("a.txt", b"a" * 100)])
    d = _daemon(workspace, metrics_address=free_port())
    t, result = _run_on_thread(d)
    try:
        wait_for(lambda: d.stats.uploaded_files == 1, what="a.txt uploaded")
        metrics_stop = d.metrics.stop

        def broken_part_threads_close(*a, **kw):
            raise RuntimeError("first failure")

        def broken_metrics_stop(*a, **kw):
            metrics_stop()  # stopped all the same (no thread left for the leak check), then fails
            raise RuntimeError("second failure")
        d.dispatch.uploader.close = broken_part_threads_close  # step 3: fails first
        d.metrics.stop = broken_metrics_stop  # step 4
        with caplog.at_level(logging.INFO, logger="s3_uploader"):
            d.request_stop()
            t.join(30)
            assert not t.is_alive()
    finally:
        d.request_stop()
        t.join(30)
    assert result == {"exit": 1}
    assert "Shutdown: error stopping the part threads; going on with the next step" in caplog.text
    assert "Shutdown: error stopping the metrics server; going on with the next step" in caplog.text
    assert "the first shutdown error was in stopping the part threads: first failure" in caplog.text
    with Store(workspace.state / "state.db", readonly=True) as st:  # later steps ran: the final commit
        assert st.counts()["uploaded"] == 1

"""Prometheus metrics and /healthz, scraped over HTTP from a daemon uploading to the real test server."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Tuple

import pytest
from helpers import cli, list_keys, make_files, wait_for
from inprocess import running_daemon
from prometheus_client.parser import text_string_to_metric_families

from s3_uploader.embedded import free_port
from s3_uploader.health import StateSnapshot, health_problem
from s3_uploader.remote import memory_error


def get(url: str) -> Tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, body


def scrape(port: int) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, parsed with the Prometheus text parser."""
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_files_bytes_states_and_durations_of_real_uploads(workspace, aws_env, s3_client):
    port = free_port()
    workspace.config(daemon={"metrics_address": port})  # a bare port binds 127.0.0.1
    with running_daemon(workspace.config_path, snapshot=StateSnapshot(interval=0.1)) as d:
        assert d.service.metrics is not None and d.service.metrics.address == ("127.0.0.1", port)
        make_files(workspace.inbox, [("cam1/a.mp4", b"a" * 3000), ("cam1/b.jpg", b"b" * 1000)])
        wait_for(lambda: len(list_keys(s3_client, workspace.bucket)) == 2, what="both uploads")

        def settled():
            m = scrape(port)
            return m if m[("s3_uploader_files", (("state", "uploaded"),))] == 2 else None
        m = wait_for(settled, what="the state snapshot to show two uploaded files")
        assert m[("s3_uploader_uploaded_files_total", ())] == 2
        assert m[("s3_uploader_uploaded_bytes_total", ())] == 4000
        assert m[("s3_uploader_upload_duration_seconds_count", ())] == 2
        assert m[("s3_uploader_upload_duration_seconds_bucket", (("le", "+Inf"),))] == 2
        assert m[("s3_uploader_files", (("state", "pending"),))] == 0
        assert m[("s3_uploader_oldest_waiting_age_seconds", ())] == 0
        assert m[("s3_uploader_queue_depth", ())] == 0
        assert m[("s3_uploader_last_upload_timestamp_seconds", ())] > 1.7e9
        assert m[("s3_uploader_healthy", ())] == 1
        assert m[("s3_uploader_cleanup_freed_files_total", ())] == 0
        assert m[("s3_uploader_bandwidth_limit_bytes_per_second", ())] == 0
        assert m[("s3_uploader_upload_concurrency", ())] == 64  # upload_workers = auto starts there
        # durations are drained into the histogram once: a second scrape still counts two
        assert scrape(port)[("s3_uploader_upload_duration_seconds_count", ())] == 2
        assert d.stats.upload_seconds == []
        status, body = get(f"http://127.0.0.1:{port}/nothing-here")
        assert status == 404
    # stopped: the port is closed
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_failures_by_reason_and_the_age_of_the_oldest_waiting_file_are_exported(workspace, aws_env, s3_client):
    port = free_port()
    workspace.config(daemon={"metrics_address": f"127.0.0.1:{port}"})
    with running_daemon(workspace.config_path, snapshot=StateSnapshot(interval=0.1)) as d:
        def bucket_gone(*args, **kw):  # as S3 answers when the bucket was deleted under us
            raise memory_error("NoSuchBucket", "The specified bucket does not exist")

        def bucket_gone_soon(*args, **kw):  # the same, for the asyncio sender's PUT
            bucket_gone()
        d.remote.put_object = bucket_gone
        d.remote.put_object_soon = bucket_gone_soon
        make_files(workspace.inbox, [("x.bin", b"x" * 10)])

        def failed():
            m = scrape(port)
            return m if m.get(("s3_uploader_upload_failures_total", (("reason", "no_bucket"),)), 0) >= 1 \
                and m[("s3_uploader_files", (("state", "uploaded"),))] == 0 else None
        m = wait_for(failed, what="a no_bucket failure in the metrics")
        assert m[("s3_uploader_upload_retries_total", ())] >= 1
        assert m[("s3_uploader_uploaded_files_total", ())] == 0
        wait_for(lambda: scrape(port)[("s3_uploader_oldest_waiting_age_seconds", ())] > 0,
                 what="the oldest waiting file to age")


def test_healthz_turns_unhealthy_when_the_watcher_dies(workspace, aws_env):
    port = free_port()
    workspace.config(daemon={"metrics_address": port})
    with running_daemon(workspace.config_path) as d:
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        assert d.watcher is not None and d.watcher.is_alive()
        d.watcher.stop()  # the observer thread ends, as when watchdog's thread dies
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 503
        assert body == "unhealthy: the filesystem watcher thread has stopped\n"
        m = scrape(port)
        assert m[("s3_uploader_healthy", ())] == 0


def test_a_loop_that_stops_beating_makes_the_daemon_unhealthy(workspace, aws_env):
    workspace.config(watch={"use_events": "false"})
    with running_daemon(workspace.config_path) as d:
        assert d.watcher is None
        now = d.clock()
        assert health_problem(d, now) is None
        problem = health_problem(d, now + 1000, max_age=120)
        assert problem is not None and problem.startswith("the scanner loop has made no progress for")
    assert health_problem(d) == "stopping"


def test_a_metrics_port_in_use_is_one_clear_startup_error(workspace):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        workspace.config(daemon={"metrics_address": f"127.0.0.1:{port}"})
        r = cli("run", "-c", str(workspace.config_path), env=workspace.server.env(), timeout=60)
    assert r.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_broken_install_without_prometheus_client_is_one_clear_startup_error(workspace, tmp_path: Path):
    # prometheus-client is a dependency, so only a broken install (pip --no-deps, a package removed by
    # hand) lacks it; a package of that name that fails to import stands in for one that is missing
    fake = tmp_path / "fakepkgs" / "prometheus_client"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    workspace.config(daemon={"metrics_address": free_port()})
    r = cli("run", "-c", str(workspace.config_path),
            env={**workspace.server.env(), "PYTHONPATH": str(fake.parent)}, timeout=60)
    assert r.returncode == 1
    assert "prometheus-client, a dependency of s3-uploader, cannot be imported" in r.stderr
    assert "reinstall s3-uploader with its dependencies" in r.stderr
    assert "Traceback" not in r.stderr


# -- no client of the metrics port can pile up threads or hold the daemon up ----------------------------------

def _answer(sock: socket.socket) -> bytes:
    """What the server has sent on ``sock`` so far (b"" while it has sent nothing, or closed)."""
    sock.setblocking(False)
    try:
        return sock.recv(4096)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError:  # reset: closed by the server
        return b""


def _status_or_reset(url: str):
    """The HTTP status, or "reset" when the server closed the connection before the client read it."""
    try:
        return get(url)[0]
    except (urllib.error.URLError, ConnectionError):
        return "reset"


def _connection_threads():
    # the server's connection threads ("Thread-N (process_request_thread)" before they had a name)
    return [t for t in threading.enumerate() if t.name == "metrics-conn" or "process_request" in t.name]


def test_connections_past_the_cap_are_answered_503_at_once_without_a_thread_each(workspace, aws_env,
                                                                                   monkeypatch):
    from s3_uploader import metrics
    # idle connections stay open for the whole test (their timeout is another test's subject)
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 60.0, raising=False)
    port = free_port()
    workspace.config(daemon={"metrics_address": port})
    socks = []
    try:
        with running_daemon(workspace.config_path):
            assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
            wait_for(lambda: not _connection_threads(), what="the health check's connection thread to end")
            refused = 0
            for i in range(40):  # one at a time, each taken (served or refused) before the next
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                socks.append(s)
                got = []

                def taken():
                    got.append(_answer(s))
                    return any(g.startswith(b"HTTP/1.0 503") for g in got) or \
                        len(_connection_threads()) + refused == i + 1
                wait_for(taken, timeout=10, what=f"connection {i + 1} to be served or refused")
                refused += any(g.startswith(b"HTTP/1.0 503") for g in got)
            threads = len(_connection_threads())
            assert threads <= 16, f"{threads} threads for 40 idle connections"
            assert (threads, refused) == (16, 24)
            assert _status_or_reset(f"http://127.0.0.1:{port}/healthz") in (503, "reset")  # full: refused
            for s in socks:
                s.close()
            wait_for(lambda: not _connection_threads(), what="the closed connections' threads to end")
            assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    finally:
        for s in socks:
            s.close()


def test_a_connection_that_trickles_its_request_is_closed_after_the_maximum_age(workspace, aws_env, monkeypatch):
    from s3_uploader import metrics
    monkeypatch.setattr(metrics, "CONNECTION_MAX_AGE", 1.5, raising=False)
    port = free_port()
    workspace.config(daemon={"metrics_address": port})
    with running_daemon(workspace.config_path):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            t0 = time.monotonic()
            closed = False
            for ch in b"GET /metrics HTTP/1.1\r\n":  # one byte every 0.2 s: each read is quick, the whole is not
                if _peer_closed(s):
                    closed = True
                    break
                try:
                    s.sendall(bytes([ch]))
                except OSError:
                    closed = True
                    break
                time.sleep(0.2)  # the client's pace (what the test is about), not a wait for a result
            assert closed, "the server kept a trickling connection open for 4.6 s"
            assert time.monotonic() - t0 < 1.5 + 2.0


def _peer_closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def test_idle_and_half_sent_connections_to_the_metrics_port_do_not_hold_up_shutdown(workspace, s3_client):
    port = free_port()
    workspace.config(daemon={"metrics_address": port, "shutdown_timeout": "2s"})
    d = workspace.start()
    d.wait_log("Serving metrics")
    assert scrape(port)[("s3_uploader_healthy", ())] == 1  # a plain install serves /metrics
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    try:
        socks[0].sendall(b"GET /metr")  # half a request line, then nothing
        make_files(workspace.inbox, [("last.bin", b"l" * 5000)])
        d.wait_log(r"Successfully uploaded last\.bin")
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        code = d.proc.wait(2 + 15)  # fails here (TimeoutExpired) when shutdown hangs
        took = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
    assert code == 0, d.output()[-3000:]
    assert took < 2 + 5, f"shutdown took {took:.1f}s with shutdown_timeout 2s"
    assert "Stopped" in d.output()
    # the final commit happened: the upload is in the database as another process reads it
    r = cli("status", "--json", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counts"]["uploaded"] == 1
    assert list_keys(s3_client, workspace.bucket) == {"last.bin": 5000}

"""Bandwidth limits holding for real uploads to the test server, and never holding up shutdown."""

from __future__ import annotations

import time

from helpers import cli, list_keys, make_files


def test_max_bandwidth_holds_for_real_uploads(workspace, s3_client):
    size, count, rate = 768 * 1024, 4, 512 * 1024  # 3 MiB at 512 KiB/s
    make_files(workspace.inbox, [(f"cam/{i}.mp4", bytes([i]) * size) for i in range(count)])
    workspace.config(upload={"max_bandwidth": "512KiB", "upload_workers": 4})
    t0 = time.monotonic()
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert list_keys(s3_client, workspace.bucket) == {f"cam/{i}.mp4": size for i in range(count)}
    # at most one second's worth is banked before the first upload, the rest is paced: >= 5 s
    least = (size * count - rate) / rate
    assert elapsed >= least, f"3 MiB uploaded in {elapsed:.2f}s: faster than 512 KiB/s allows ({least:.1f}s)"
    assert elapsed < 60
    assert "Upload bandwidth limit now 524288 bytes/s" in r.stderr


def test_a_transfer_waiting_on_the_limit_does_not_hold_shutdown_past_its_timeout(workspace, s3_client):
    # 4 MiB at 64 KiB/s would wait a minute; shutdown_timeout is 1 s
    workspace.config(upload={"max_bandwidth": "64KiB"}, daemon={"shutdown_timeout": "1s"})
    d = workspace.start()
    d.wait_log("Watching")
    make_files(workspace.inbox, [("slow.bin", b"s" * 4 * 1024 * 1024)])
    d.wait_log(r"Uploading slow\.bin attempt 1")
    t0 = time.monotonic()
    assert d.stop(timeout=30) == 0
    assert time.monotonic() - t0 < 20
    assert "Shutdown timeout: abandoning uploads in flight" in d.output()
    assert list_keys(s3_client, workspace.bucket) == {}
    # nothing was lost: without the limit the next run sends it
    workspace.config(daemon={"shutdown_timeout": "1s"})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    assert list_keys(s3_client, workspace.bucket) == {"slow.bin": 4 * 1024 * 1024}

"""A watch directory reached through a symlink that is retargeted while the daemon runs: found by
review. Every inside-the-tree check compares with the target resolved at start, so nothing below
the new target was found any more, and nothing said so."""
from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest
from helpers import DaemonProcess, list_keys, make_files, wait_for

from s3_uploader.embedded import free_port

pytestmark = pytest.mark.integration


def healthz(port: int):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, body


def test_a_watch_directory_symlink_retargeted_while_running_is_one_error_and_red_health(workspace, s3_client):
    a, b = workspace.tmp / "disk-a", workspace.tmp / "disk-b"
    a.mkdir()
    b.mkdir()
    link = workspace.tmp / "watched"
    os.symlink(a, link)
    make_files(a, [("cam/one.jpg", b"1")])
    port = free_port()
    workspace.config(watch={"directory_to_watch": link, "scan_interval": "1s"},
                     daemon={"metrics_address": f"127.0.0.1:{port}", "log_level": "DEBUG"})
    d = DaemonProcess(workspace.config_path, env=workspace.server.env())
    workspace.daemons.append(d)
    wait_for(lambda: "cam/one.jpg" in list_keys(s3_client, workspace.bucket), what="the first file")
    assert wait_for(lambda: healthz(port)[0] == 200, what="healthy")
    tmp = workspace.tmp / "watched.new"
    os.symlink(b, tmp)
    os.replace(tmp, link)  # the mount point moves, say
    out = d.wait_log(r"ERROR +Watch directory .*watched now resolves to .*disk-b \(it was .*disk-a at start\)")
    code, body = wait_for(lambda: (lambda h: h if h[0] == 503 else None)(healthz(port)), what="red health")
    assert "the watch directory now resolves to" in body and "restart to follow it" in body
    scans = out.count("Scan: ")
    d.wait_log(r"Scan: ", count=scans + 2)  # two more rescans (scan_interval 1s)
    assert d.output().count("now resolves to") == 1  # said once, not at every scan
    assert d.stop() == 0
    # a restart follows it
    make_files(b, [("cam/two.jpg", b"2")])
    d2 = DaemonProcess(workspace.config_path, env=workspace.server.env())
    workspace.daemons.append(d2)
    wait_for(lambda: "cam/two.jpg" in list_keys(s3_client, workspace.bucket), what="the new target's file")
    assert d2.stop() == 0

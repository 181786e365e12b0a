"""The upload pipeline end to end, run as users run it: the CLI against a real S3-compatible server."""
from __future__ import annotations

import json
import os

from helpers import cli, get_bytes, list_keys, make_files, wait_for


def test_once_uploads_nested_tree_skipping_hidden_and_reports_zero(workspace, s3_client):
    files = make_files(workspace.inbox, [("a.txt", b"alpha"), ("cam1/2026/x.mp4", b"x" * 1000),
                                         ("cam1/2026/empty.jpg", b""), (".hidden.txt", b"h"),
                                         (".cache/inside.txt", b"c")])
    workspace.config(s3={"prefix": "site1"})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    keys = list_keys(s3_client, workspace.bucket)
    assert keys == {"site1/a.txt": 5, "site1/cam1/2026/x.mp4": 1000, "site1/cam1/2026/empty.jpg": 0}
    assert get_bytes(s3_client, workspace.bucket, "site1/cam1/2026/x.mp4") == files["cam1/2026/x.mp4"]
    status = json.loads(cli("status", "--json", "-c", str(workspace.config_path)).stdout)
    assert status["counts"]["uploaded"] == 3
    assert status["waiting"] == 0


def test_daemon_uploads_a_dropped_file_and_stops_cleanly_on_sigterm(workspace, s3_client):
    workspace.config()
    d = workspace.start()
    d.wait_log("Watching")
    (workspace.inbox / "dropped.bin").write_bytes(os.urandom(5000))
    d.wait_log(r"Successfully uploaded dropped\.bin \(5000 bytes")
    assert list_keys(s3_client, workspace.bucket) == {"dropped.bin": 5000}
    assert d.stop() == 0

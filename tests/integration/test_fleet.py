"""Fleets: one daemon per host into one bucket, keyed by {hostname} and the file's date, decided once."""
from __future__ import annotations

import os
import socket
import time

from helpers import cli, get_bytes, list_keys, make_files


def local_epoch(y: int, m: int, d: int, hh: int = 12) -> float:
    return time.mktime((y, m, d, hh, 0, 0, 0, 0, -1))


def test_placeholders_come_from_the_host_and_each_files_mtime_and_a_new_version_gets_its_own_days_key(
        workspace, s3_client):
    host = socket.gethostname().split(".")[0]
    make_files(workspace.inbox, [("cam1/a.mp4", b"first"), ("b.jpg", b"bee")])
    os.utime(workspace.inbox / "cam1/a.mp4", (local_epoch(2025, 12, 31), local_epoch(2025, 12, 31)))
    os.utime(workspace.inbox / "b.jpg", (local_epoch(2026, 2, 3), local_epoch(2026, 2, 3)))
    workspace.config(s3={"prefix": "fleet/{hostname}/{yyyy}/{mm}/{dd}"})
    env = workspace.server.env()
    r = cli("once", "-c", str(workspace.config_path), env=env)
    assert r.returncode == 0, r.stderr
    first_key = f"fleet/{host}/2025/12/31/cam1/a.mp4"
    assert list_keys(s3_client, workspace.bucket) == {first_key: 5, f"fleet/{host}/2026/02/03/b.jpg": 3}

    # the file is rewritten on another day: uploaded again, to that day's key; the first day's
    # object, perhaps its only copy, stays
    (workspace.inbox / "cam1/a.mp4").write_bytes(b"second version")
    os.utime(workspace.inbox / "cam1/a.mp4", (local_epoch(2026, 3, 4), local_epoch(2026, 3, 4)))
    r = cli("once", "-c", str(workspace.config_path), env=env)
    assert r.returncode == 0, r.stderr
    assert get_bytes(s3_client, workspace.bucket, f"fleet/{host}/2026/03/04/cam1/a.mp4") == b"second version"
    assert get_bytes(s3_client, workspace.bucket, first_key) == b"first"
    # ls lists under the fixed part of the prefix, before the first placeholder
    r = cli("ls", "-c", str(workspace.config_path), env=env)
    assert r.returncode == 0, r.stderr
    assert "3 object(s), 22 bytes under s3://" in r.stdout

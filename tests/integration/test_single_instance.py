"""One daemon per state database: a second `run` or `once` on it is refused with one line naming the
first (found by review: a manual `once` on a running daemon's database finished that daemon's
cleanup pass under it), and a daemon killed with `kill -9` leaves no lock behind."""
from __future__ import annotations

import pytest
from helpers import cli, list_keys, make_files, wait_for

pytestmark = pytest.mark.integration


def test_a_second_daemon_on_the_same_database_is_refused_naming_the_first_and_kill_9_frees_it(
        workspace, s3_client):
    make_files(workspace.inbox, [("a.txt", b"a")])
    workspace.config()
    d = workspace.start()
    d.wait_log("Watching")
    for command in ("once", "run"):
        r = cli(command, "-c", str(workspace.config_path), env=workspace.server.env(), timeout=60)
        assert r.returncode == 1, r.stderr[-2000:]
        assert f"is in use by another s3-uploader (pid {d.pid})" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
    # status and check only read: they work while it runs
    assert cli("status", "-c", str(workspace.config_path)).returncode == 0
    wait_for(lambda: "a.txt" in list_keys(s3_client, workspace.bucket), what="a.txt uploaded")
    d.kill()  # kill -9: the operating system drops the lock with the process
    make_files(workspace.inbox, [("b.txt", b"b")])
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env(), timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "b.txt" in list_keys(s3_client, workspace.bucket)

"""systemd notifications: what the daemon sends on $NOTIFY_SOCKET, in order, received on a test socket."""

from __future__ import annotations

import secrets

import pytest
from helpers import DaemonProcess, NotifySocket, list_keys, make_files, wait_for
from inprocess import running_daemon

from s3_uploader.notify import SdNotify, ServiceNotifier





@pytest.fixture
def notify_socket():
    s = NotifySocket("@s3u-test-" + secrets.token_hex(8))  # abstract namespace: no path length limit
    yield s
    s.close()


def test_the_daemon_sends_ready_status_watchdog_and_stopping_in_order(workspace, notify_socket, s3_client):
    workspace.config()
    d = DaemonProcess(workspace.config_path, command="run",
                      env={**workspace.server.env(), "NOTIFY_SOCKET": notify_socket.address,
                           "WATCHDOG_USEC": "1000000"})
    workspace.daemons.append(d)
    wait_for(lambda: notify_socket.lines().count("WATCHDOG=1") >= 2, what="two watchdog pings")
    make_files(workspace.inbox, [("a.txt", b"alpha")])
    wait_for(lambda: "a.txt" in list_keys(s3_client, workspace.bucket), what="the upload")
    wait_for(lambda: any(line.startswith("STATUS=") and "1 uploaded since start" in line
                         for line in notify_socket.lines()), what="a STATUS line counting the upload")
    assert d.stop() == 0
    lines = notify_socket.lines()
    assert lines[0] == "READY=1", lines[:5]
    assert lines[1].startswith("STATUS=0 queued, 0 uploading, 0 failed, 0 uploaded since start; last upload none")
    stop_at = lines.index("STOPPING=1")
    assert "WATCHDOG=1" in lines[2:stop_at]
    assert "WATCHDOG=1" not in lines[stop_at:], "no watchdog ping may follow STOPPING=1"
    assert lines.count("READY=1") == 1
    assert lines[-1].startswith("STATUS=Stopping")


def test_watchdog_pings_stop_while_the_watcher_is_dead(workspace, aws_env, notify_socket, monkeypatch, caplog):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    workspace.config()
    with running_daemon(workspace.config_path) as d:
        client = SdNotify(notify_socket.address)
        service = ServiceNotifier(d, client, d.snapshot, watchdog_every=2.0)
        try:
            now = d.clock()
            service.tick(now)
            assert wait_for(lambda: "WATCHDOG=1" in notify_socket.lines(), what="a ping while healthy")
            d.watcher.stop()
            before = notify_socket.lines().count("WATCHDOG=1")
            service.tick(now + 1.0)
            service.tick(now + 2.0)
            assert wait_for(lambda: any("Unhealthy (the filesystem watcher thread has stopped)" in r.getMessage()
                                        for r in caplog.records), what="the unhealthy warning")
            assert notify_socket.lines().count("WATCHDOG=1") == before
        finally:
            client.close()

"""systemd notifications: what the daemon sends on $NOTIFY_SOCKET, in order, received on a test socket."""

from __future__ import annotations

import os
import secrets
import tempfile
from helpers import NotifySocket, wait_for

from s3_uploader.notify import SdNotify, watchdog_interval





def test_sd_notify_reaches_a_socket_file_path():
    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # short: AF_UNIX paths are limited to ~107 bytes
        server = NotifySocket(os.path.join(d, "notify"))
        client = SdNotify(server.address)
        try:
            assert client.enabled
            assert client.notify("READY=1", "STATUS=hello")
            assert wait_for(server.receive, what="a message") == ["READY=1\nSTATUS=hello"]
        finally:
            client.close()
            server.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    client = SdNotify.from_environ({})
    assert not client.enabled
    assert client.notify("READY=1") is False


def test_a_vanished_notify_socket_is_a_warning_not_a_failure(caplog):
    client = SdNotify("@s3u-test-nobody-listens-" + secrets.token_hex(8))
    assert client.notify("READY=1") is False
    assert client.notify("READY=1") is False
    client.close()
    assert sum("Cannot notify systemd" in r.getMessage() for r in caplog.records) == 1


def test_watchdog_interval_comes_from_watchdog_usec_for_our_own_pid_only():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None

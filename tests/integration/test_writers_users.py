"""The writer check across users, as deployed: the writer runs as one user, the daemon as another
with no privilege but (in the shipped unit) CAP_LEASE.

The writer is ``sh`` run as uid 65534 (setpriv) holding the file open for writing on its stdout;
the file is owned by 65534 too. The daemon is ``s3-uploader run`` under setpriv with an empty
capability bounding set: uid 0 with no capabilities is, for both checks that matter here, as
unprivileged as any other user (a lease on a file it does not own needs CAP_LEASE; another uid's
/proc/PID/fd needs CAP_SYS_PTRACE). A real second uid is not used because this checkout's Python
lives under /root, which other users cannot run.

"The daemon looked again" is observed, not slept on: every look of the lease probe opens the file,
and an inotify witness counts those opens.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import pytest
from helpers import PY, DaemonProcess, _env, cannot_run, get_bytes, list_keys

NOBODY = 65534
NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
LEASE_ONLY = ["setpriv", "--bounding-set=-all,+lease", "--inh-caps=-all"]


@pytest.fixture(autouse=True)
def _needs_root_and_setpriv():
    if shutil.which("setpriv") is None:
        cannot_run("setpriv (util-linux) is needed to run the writer and the daemon as other users")
    if os.geteuid() != 0:
        cannot_run("changing users needs root")


class WrappedDaemon(DaemonProcess):
    """DaemonProcess run under a wrapper command (setpriv)."""

    def __init__(self, workspace, prefix: List[str], command: str = "run"):
        self.config = workspace.config_path
        self.log_path = workspace.config_path.with_suffix(".stderr.log")
        self._log = open(self.log_path, "ab")
        self._offset = self._log.tell()
        self.proc = subprocess.Popen([*prefix, PY, "-m", "s3_uploader", command, "-c", str(self.config)],
                                     env=_env(workspace.server.env()), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)


@contextmanager
def writer_holding(path: Path, first: bytes) -> Iterator[subprocess.Popen]:
    """``path`` (owned by uid 65534) held open for writing by a process of uid 65534 until a line is
    sent to its stdin; it then appends `` part2`` and exits."""
    path.write_bytes(first)
    os.chown(path, NOBODY, NOBODY)
    path.chmod(0o644)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        p = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                              "--bounding-set=-all", "--inh-caps=-all", "sh", "-c", "read line; printf ' part2'"],
                             stdin=subprocess.PIPE, stdout=fd, stderr=subprocess.DEVNULL)
    finally:
        os.close(fd)  # from now on only the other user's process has it open for writing
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        p.stdin.close()


def release(writer: subprocess.Popen) -> None:
    writer.stdin.write(b"go\n")
    writer.stdin.flush()
    assert writer.wait(10) == 0


@contextmanager
def opens_of(path: Path) -> Iterator[List[int]]:
    """A one-element list counting opens of ``path`` (inotify IN_OPEN) while the block runs."""
    from watchdog.events import FileOpenedEvent, FileSystemEventHandler
    from watchdog.observers.inotify import InotifyObserver

    count = [0]
    lock = threading.Lock()

    class Counter(FileSystemEventHandler):
        def on_any_event(self, event):
            if isinstance(event, FileOpenedEvent) and event.src_path == str(path):
                with lock:
                    count[0] += 1

    obs = InotifyObserver()
    obs.schedule(Counter(), str(path.parent), recursive=False)
    obs.start()
    try:
        yield count
    finally:
        obs.stop()
        obs.join(10)


def configure(workspace):
    # stable after two equal looks 0.2 s apart: the writer check decides, not a long wait
    workspace.config(watch={"stable_seconds": "0.2s", "stable_checks": 2})


def test_with_cap_lease_a_file_another_user_holds_open_waits_for_that_writer_to_close(workspace, s3_client):
    configure(workspace)
    held = workspace.inbox / "held.log"
    (workspace.inbox / "other.txt").write_bytes(b"other")
    with writer_holding(held, b"part1") as writer, opens_of(held) as opens:
        d = WrappedDaemon(workspace, LEASE_ONLY)
        try:
            d.wait_log(r"Waiting for writer to close file: held\.log")
            # three more looks, each refused by the kernel's lease check (the writer checks come 2 s apart)
            seen = opens[0]
            d.wait_until(lambda: opens[0] >= seen + 3, timeout=30, what="three more looks at held.log")
            d.wait_until(lambda: "other.txt" in list_keys(s3_client, workspace.bucket), what="other.txt uploaded")
            assert "held.log" not in list_keys(s3_client, workspace.bucket)
            release(writer)
            d.wait_until(lambda: "held.log" in list_keys(s3_client, workspace.bucket), what="held.log uploaded")
            assert get_bytes(s3_client, workspace.bucket, "held.log") == b"part1 part2"
        finally:
            assert d.stop() == 0, d.output()[-3000:]
    out = d.output()
    assert "Writer check cannot see" not in out, out[-3000:]
    check = subprocess.run([*LEASE_ONLY, PY, "-m", "s3_uploader", "check", "-c", str(workspace.config_path)],
                           env=_env(workspace.server.env()), capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
    assert "Writer check OK: file leases (CAP_LEASE" in check.stdout, check.stdout + check.stderr


def test_without_cap_lease_the_daemon_says_once_that_it_cannot_see_another_users_writer(workspace, s3_client):
    configure(workspace)
    held = workspace.inbox / "held.log"
    with writer_holding(held, b"part1") as writer:
        d = WrappedDaemon(workspace, NO_CAPS)
        try:
            d.wait_log("Writer check cannot see other users' processes")
            # and it is as blind as it says: the held file goes half-written
            d.wait_until(lambda: "held.log" in list_keys(s3_client, workspace.bucket), what="held.log uploaded")
            assert get_bytes(s3_client, workspace.bucket, "held.log") == b"part1"
            release(writer)
        finally:
            assert d.stop() == 0, d.output()[-3000:]
    out = d.output()
    assert out.count("Writer check cannot see") == 1, out[-3000:]
    assert "AmbientCapabilities=CAP_LEASE" in out
    check = subprocess.run([*NO_CAPS, PY, "-m", "s3_uploader", "check", "-c", str(workspace.config_path)],
                           env=_env(workspace.server.env()), capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
    assert "Writer check cannot see other users' processes" in check.stdout, check.stdout + check.stderr
    assert "CAP_LEASE" in check.stdout

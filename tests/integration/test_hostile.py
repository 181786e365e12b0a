"""Hostile inputs, one test each: the run ends in bounded time with one clear line about the bad
input, nothing outside the watched tree is opened, and every good file is uploaded.

Each test runs the real CLI against the real S3-compatible server. Bounded time is the subprocess
timeout: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import threading
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import pytest
from helpers import cannot_run, get_bytes, list_keys, make_files, once, status, wait_for

MiB = 1024 * 1024

GOOD = [("good/one.txt", b"one"), ("good/two.bin", bytes(range(256)) * 40)]


def assert_good_uploaded(s3_client, workspace, good, exactly=True):
    keys = list_keys(s3_client, workspace.bucket)
    for rel, data in good.items():
        assert get_bytes(s3_client, workspace.bucket, rel) == data, rel
    if exactly:
        assert set(keys) == set(good), keys


@contextmanager
def opens_witnessed(folder: Path) -> Iterator[List[str]]:
    """Collect every file opened under ``folder`` (inotify IN_OPEN) while the block runs.

    The witness is proven live first: it must see an open of our own before the block starts.
    """
    from watchdog.events import FileOpenedEvent, FileSystemEventHandler
    from watchdog.observers.inotify import InotifyObserver

    opened: List[str] = []
    lock = threading.Lock()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            if isinstance(event, FileOpenedEvent):
                with lock:
                    opened.append(event.src_path)

    probe = folder / "witness-probe"
    probe.write_bytes(b"")
    obs = InotifyObserver()
    obs.schedule(Handler(), str(folder), recursive=True)
    obs.start()
    try:
        def probe_seen():
            probe.read_bytes()
            with lock:
                return str(probe) in opened
        wait_for(probe_seen, timeout=10, interval=0.1, what="the open witness to see an open")
        seen: List[str] = []
        yield seen
        with lock:  # our own probe reads may still be arriving: only other files count
            seen.extend(p for p in opened if p != str(probe))
    finally:
        obs.stop()
        obs.join()


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder next to the watched one, with a secret that must never be read."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_bytes(b"never upload me")
    (d / "dir").mkdir()
    (d / "dir" / "deep-secret.txt").write_bytes(b"nor me")
    return d


# -- special files -------------------------------------------------------------------------------------

def test_a_fifo_without_a_writer_hangs_nothing_and_is_reported_once(workspace, s3_client):
    good = make_files(workspace.inbox, GOOD)
    os.mkfifo(workspace.inbox / "pipe")
    workspace.config()
    r = once(workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("Skipping a FIFO (only regular files are uploaded): pipe") == 1
    assert_good_uploaded(s3_client, workspace, good)


def test_a_unix_socket_is_reported_and_never_opened(workspace, s3_client, monkeypatch):
    good = make_files(workspace.inbox, GOOD)
    monkeypatch.chdir(workspace.inbox)  # a relative bind: socket paths are limited to ~107 bytes
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind("app.sock")
        s.listen(1)
        workspace.config()
        r = once(workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Skipping a socket (only regular files are uploaded): app.sock" in r.stderr
    assert_good_uploaded(s3_client, workspace, good)


def test_a_device_file_and_a_symlink_to_dev_zero_are_never_read(workspace, s3_client):
    good = make_files(workspace.inbox, GOOD)
    os.mknod(workspace.inbox / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers
    os.symlink("/dev/zero", workspace.inbox / "zero-link")
    workspace.config(watch={"follow_symlinks": "true"})
    r = once(workspace, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Skipping a character device (only regular files are uploaded): zero" in r.stderr
    assert "Symlink leads outside the watched directory, not followed: zero-link" in r.stderr
    assert_good_uploaded(s3_client, workspace, good)


@pytest.mark.parametrize("follow", ["false", "true"])
def test_symlink_loops_and_links_leading_outside_are_not_followed_and_nothing_outside_is_opened(
        workspace, s3_client, outside, follow):
    good = make_files(workspace.inbox, GOOD)
    inbox = workspace.inbox
    os.symlink(outside / "secret.txt", inbox / "secret-link.txt")
    os.symlink(outside / "dir", inbox / "outside-dir")
    os.symlink("../../outside", inbox / "good" / "up-and-out")  # relative, through '..'
    os.symlink("loop-b", inbox / "loop-a")  # a <-> b: a loop of file links
    os.symlink("loop-a", inbox / "loop-b")
    os.symlink(".", inbox / "good" / "self")  # a folder loop
    os.symlink(inbox / "good" / "one.txt", inbox / "inside-link.txt")  # inside: fine to follow
    workspace.config(watch={"follow_symlinks": follow})
    with opens_witnessed(outside) as opened:
        r = once(workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    assert opened == []
    keys = list_keys(s3_client, workspace.bucket)
    assert not any("secret" in k or "outside" in k or "up-and-out" in k for k in keys), keys
    if follow == "true":
        assert "Symlink leads outside the watched directory, not followed: secret-link.txt" in r.stderr
        assert "Symlink leads outside the watched directory, not followed: outside-dir" in r.stderr
        assert "Symlink loop (folder already walked), not followed: good/self" in r.stderr
        good["inside-link.txt"] = good["good/one.txt"]
    else:
        assert "Skipping symlink (follow_symlinks = false): secret-link.txt" in r.stderr
        assert "Skipping symlink (follow_symlinks = false): loop-a" in r.stderr
    assert_good_uploaded(s3_client, workspace, good)


def test_an_unreadable_file_gets_a_clear_permission_error_and_is_parked_while_the_rest_goes(
        workspace, s3_client):
    if shutil.which("setpriv") is None:
        cannot_run("setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE when running as root")
    good = make_files(workspace.inbox, GOOD)
    locked = workspace.inbox / "locked.txt"
    locked.write_bytes(b"private")
    locked.chmod(0)
    workspace.config(upload={"max_retries": 1, "retry_backoff_base": "0.1s"})
    # as root, mode 000 does not stop reading: run the daemon without the capabilities that bypass it
    r = once(workspace, prefix=["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                                "--inh-caps=-dac_override,-dac_read_search"])
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Upload of locked.txt failed (local: permission denied reading the file" in r.stderr
    assert "parked after 2 attempt(s)" in r.stderr
    assert_good_uploaded(s3_client, workspace, good)
    st = status(workspace)
    assert [p["path"] for p in st["parked"]] == ["locked.txt"]
    assert "permission denied" in st["parked"][0]["error"]


# -- files that change under the reader -------------------------------------------------------------------

def start_held_after_first_part(workspace, proxy, name, size):
    """A multipart upload of ``name`` with its second part held at the proxy."""
    data = os.urandom(size)
    (workspace.inbox / name).write_bytes(data)
    workspace.config(s3={"endpoint_url": proxy.endpoint},
                     upload={"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB", "max_concurrency": 1})
    proxy.hold("UploadPart", after=1)
    d = workspace.start()
    wait_for(lambda: proxy.held() == 1, timeout=30, what="the second part to be in flight")
    return d, data


def test_a_file_truncated_while_being_sent_is_never_published_torn_and_its_new_version_goes(
        workspace, proxy, s3_client):
    d, data = start_held_after_first_part(workspace, proxy, "growing.bin", 12 * MiB)
    with open(workspace.inbox / "growing.bin", "r+b") as f:
        f.truncate(7 * MiB)  # part 2 is now short and part 3 gone
    proxy.release(drop=False)
    # the part's MD5 pass (parts are streamed from the file) says how far it got: "(0 of 2097152 bytes)"
    d.wait_log(r"File changed while it was being uploaded \(file shrank while it was being read"
               r"( \(\d+ of \d+ bytes\))?\)"
               r"|File changed while it was being uploaded \(changed while it was being read\)", timeout=30)
    d.wait_log(r"Successfully uploaded growing\.bin \(7340032 bytes", timeout=60)
    assert get_bytes(s3_client, workspace.bucket, "growing.bin") == data[: 7 * MiB]
    assert s3_client.list_multipart_uploads(Bucket=workspace.bucket).get("Uploads", []) == []
    assert d.stop() == 0


def test_a_file_that_vanishes_while_being_sent_is_logged_and_nothing_half_sent_remains(
        workspace, proxy, s3_client):
    d, _ = start_held_after_first_part(workspace, proxy, "gone.bin", 12 * MiB)
    (workspace.inbox / "gone.bin").unlink()
    proxy.release(drop=False)
    d.wait_log(r"File vanished before it was uploaded: gone\.bin", timeout=30)
    wait_for(lambda: s3_client.list_multipart_uploads(Bucket=workspace.bucket).get("Uploads", []) == [],
             timeout=10, what="the half-sent upload to be aborted")
    assert list_keys(s3_client, workspace.bucket) == {}
    assert d.stop() == 0
    assert status(workspace)["total"] == 0


# -- odd but valid files ------------------------------------------------------------------------------------

def test_a_sparse_file_is_uploaded_byte_identical_holes_as_zeros(workspace, s3_client):
    path = workspace.inbox / "sparse.img"
    with open(path, "wb") as f:
        f.truncate(9 * MiB)
        f.seek(3 * MiB)
        f.write(b"island")
        f.seek(9 * MiB - 4)
        f.write(b"tail")
    assert os.stat(path).st_blocks * 512 < 1 * MiB  # really sparse on this file system
    workspace.config(upload={"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB"})
    r = once(workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    assert get_bytes(s3_client, workspace.bucket, "sparse.img") == path.read_bytes()


def test_a_name_that_is_not_utf8_is_uploaded_under_the_documented_reversible_escape(workspace, s3_client):
    raw = b"caf\xe9 100%.txt"  # Latin-1 'e acute': not valid UTF-8
    with open(os.path.join(os.fsencode(workspace.inbox), raw), "wb") as f:
        f.write(b"latin")
    good = make_files(workspace.inbox, GOOD)
    workspace.config()
    r = once(workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    keys = list_keys(s3_client, workspace.bucket)
    assert "caf%E9 100%.txt" in keys  # a '%' not followed by two hex digits stays as it is
    assert urllib.parse.unquote_to_bytes("caf%E9 100%.txt") == raw
    assert get_bytes(s3_client, workspace.bucket, "caf%E9 100%.txt") == b"latin"
    assert_good_uploaded(s3_client, workspace, good, exactly=False)


def test_a_key_over_1024_bytes_is_parked_with_a_clear_line_shown_by_status_and_the_rest_goes(
        workspace, s3_client):
    deep = "/".join(["d" * 250] * 4) + "/" + "f" * 100 + ".txt"  # each name is legal, the whole is not
    assert len(deep) == 1108
    p = workspace.inbox / deep
    p.parent.mkdir(parents=True)
    p.write_bytes(b"too deep")
    good = make_files(workspace.inbox, GOOD)
    workspace.config()
    r = once(workspace)
    assert r.returncode == 1
    assert f"Cannot upload {deep}: S3 key is 1108 bytes long, over S3's limit of 1024; parked" in r.stderr
    assert_good_uploaded(s3_client, workspace, good)
    st = status(workspace)
    assert st["counts"]["parked"] == 1
    assert st["parked"][0]["path"] == deep and "over S3's limit of 1024" in st["parked"][0]["error"]


def test_a_zero_byte_file_is_uploaded(workspace, s3_client):
    (workspace.inbox / "empty.flag").write_bytes(b"")
    workspace.config()
    r = once(workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list_keys(s3_client, workspace.bucket) == {"empty.flag": 0}


# -- the state database ------------------------------------------------------------------------------------

@pytest.fixture
def tiny_state_disk(workspace):
    """workspace.state on a 16 MiB tmpfs (needs root and mount); unmounted afterwards."""
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(workspace.state)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        cannot_run(f"cannot mount a tmpfs here ({r.stderr.strip()}); "
                    "test_a_commit_that_lost_writes_makes_the_store_refuse_every_later_write covers the store")
    try:
        yield workspace.state
    finally:
        subprocess.run(["umount", "-l", str(workspace.state)], check=True)


def fill(folder: Path) -> Path:
    """Fill ``folder``'s file system to the last byte; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_under_the_state_database_stops_with_a_clear_error_and_loses_nothing(
        workspace, s3_client, tiny_state_disk):
    workspace.config()
    first = make_files(workspace.inbox, [("before.txt", b"x")])
    assert once(workspace).returncode == 0
    filler = fill(tiny_state_disk)
    more = make_files(workspace.inbox, [(f"batch/{'n' * 150}-{i:04d}.txt", b"%d" % i) for i in range(800)])
    r = once(workspace, timeout=90)
    assert r.returncode == 1
    assert "the disk is full" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert all(p.exists() for p in workspace.inbox.rglob("*.txt"))  # nothing deleted
    filler.unlink()
    r = once(workspace, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    keys = list_keys(s3_client, workspace.bucket)
    assert set(keys) == set(first) | set(more)


def test_a_corrupt_database_is_one_clear_line_naming_it_with_exit_1_and_is_left_in_place(workspace):
    make_files(workspace.inbox, GOOD)
    db = workspace.state / "state.db"
    garbage = os.urandom(8192)
    db.write_bytes(garbage)
    workspace.config()
    r = once(workspace)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if "State database" in ln]
    assert len(lines) == 1 and f"State database {db} is corrupt" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert db.read_bytes() == garbage
    conn = sqlite3.connect(str(db))
    try:
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute("SELECT * FROM sqlite_master").fetchall()
    finally:
        conn.close()

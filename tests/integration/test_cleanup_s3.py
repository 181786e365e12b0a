"""Cleanup against the real S3-compatible server: what users run (``once``, the daemon, ``status``)
and, where a pass must be driven precisely (free space, request counts), the Cleaner itself over
a BotoRemote speaking HTTP to the server."""
from __future__ import annotations

import logging
import os
import time
from typing import List

from helpers import cli, get_bytes, list_keys, make_files, once, status, wait_for

from s3_uploader.cleanup import Cleaner, CleanupSettings
from s3_uploader.config import FreeSpace, load_config
from s3_uploader.remote import remote_from_config
from s3_uploader.store import Store


def wait_until_due(ws, seconds: float) -> None:
    """Wait (condition on the clock, not a guess) until every upload recorded is ``seconds`` old."""
    with Store(ws.state / "state.db", readonly=True) as st:
        newest = max(r.uploaded_at for r in st.in_states(("uploaded",), limit=100000))
    wait_for(lambda: time.time() >= newest + seconds + 0.01, timeout=seconds + 5, what="uploads to become due")


def test_once_deletes_files_after_delete_after_and_removes_emptied_folders_but_not_the_root(workspace, s3_client):
    make_files(workspace.inbox, [("top.txt", b"top"), ("cam1/2026/a.mp4", b"a" * 1000),
                                 ("cam1/2026/b.jpg", b"b" * 10), ("cam2/big.bin", os.urandom(6 * 1024 * 1024))])
    upload = {"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB"}
    workspace.config(upload=upload, cleanup={"delete_after": "1h"})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    assert len(list(workspace.inbox.rglob("*.*"))) == 4, "delete_after = 1h: nothing is due yet"
    wait_until_due(workspace, 1)
    workspace.config(upload=upload, cleanup={"delete_after": "1s"})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    assert "Deleted local copy of cam2/big.bin" in r.stderr  # a multipart object, proven by its ETag
    assert list(workspace.inbox.iterdir()) == [] and workspace.inbox.is_dir()
    assert set(list_keys(s3_client, workspace.bucket)) == {"top.txt", "cam1/2026/a.mp4", "cam1/2026/b.jpg",
                                                           "cam2/big.bin"}
    st = status(workspace)
    assert st["counts"]["deleted"] == 4 and st["counts"]["uploaded"] == 0
    assert st["cleanup"]["files_freed"] == 4
    assert st["cleanup"]["bytes_freed"] == 3 + 1000 + 10 + 6 * 1024 * 1024
    text = cli("status", "-c", str(workspace.config_path)).stdout
    assert "Cleanup: 4 file(s), 6.3 MB freed so far" in text


def test_the_daemon_deletes_files_once_delete_after_has_passed(workspace, s3_client):
    workspace.config(cleanup={"delete_after": "1s", "cleanup_interval": "1s"})
    d = workspace.start()
    d.wait_log("Watching")
    make_files(workspace.inbox, [("cam/a.bin", b"a" * 500), ("b.bin", b"b" * 5)])
    d.wait_log(r"Deleted local copy of cam/a\.bin \(500 bytes; S3 has cam/a\.bin\)")
    d.wait_log(r"Deleted local copy of b\.bin")
    wait_for(lambda: list(workspace.inbox.iterdir()) == [], what="the emptied folder cam/ to be removed")
    assert list_keys(s3_client, workspace.bucket) == {"cam/a.bin": 500, "b.bin": 5}
    assert d.stop() == 0


def test_an_object_deleted_behind_the_daemons_back_keeps_its_file_and_is_uploaded_again(workspace, s3_client):
    make_files(workspace.inbox, [("cam/a.bin", b"precious"), ("cam/b.bin", b"fine")])
    assert once(workspace).returncode == 0
    s3_client.delete_object(Bucket=workspace.bucket, Key="cam/a.bin")
    wait_until_due(workspace, 1)
    r = once(workspace, cleanup={"delete_after": "1s"})
    assert r.returncode == 0, r.stderr
    assert "Not deleting cam/a.bin: object missing" in r.stderr
    assert (workspace.inbox / "cam" / "a.bin").read_bytes() == b"precious"
    assert not (workspace.inbox / "cam" / "b.bin").exists()
    assert get_bytes(s3_client, workspace.bucket, "cam/a.bin") == b"precious"
    st = status(workspace)
    assert st["cleanup"]["requeued"] == 1 and st["counts"]["uploaded"] == 1
    assert st["cleanup"]["last_pass"]["held"] == {"object missing": 1}


def test_an_object_whose_size_differs_keeps_its_file(workspace, s3_client):
    make_files(workspace.inbox, [("a.bin", b"the real bytes")])
    assert once(workspace).returncode == 0
    s3_client.put_object(Bucket=workspace.bucket, Key="a.bin", Body=b"other")
    wait_until_due(workspace, 1)
    r = once(workspace, cleanup={"delete_after": "1s"})
    assert r.returncode == 0, r.stderr
    assert "Not deleting a.bin: size differs" in r.stderr
    assert (workspace.inbox / "a.bin").read_bytes() == b"the real bytes"
    assert get_bytes(s3_client, workspace.bucket, "a.bin") == b"the real bytes"


def test_an_object_with_the_same_size_but_other_bytes_keeps_its_file(workspace, s3_client):
    make_files(workspace.inbox, [("a.bin", b"AAAA")])
    assert once(workspace).returncode == 0
    s3_client.put_object(Bucket=workspace.bucket, Key="a.bin", Body=b"BBBB")
    wait_until_due(workspace, 1)
    r = once(workspace, cleanup={"delete_after": "1s"})
    assert "Not deleting a.bin: etag differs" in r.stderr
    assert (workspace.inbox / "a.bin").read_bytes() == b"AAAA"
    assert get_bytes(s3_client, workspace.bucket, "a.bin") == b"AAAA"


def _cleaner(ws, store: Store, settings: CleanupSettings, **kw):
    remote = remote_from_config(load_config(ws.config_path))
    return Cleaner(ws.inbox, store, remote, lambda: settings, **kw), remote


def test_a_file_modified_after_its_upload_is_kept_and_re_uploaded(workspace, s3_client, aws_env):
    make_files(workspace.inbox, [("log/a.log", b"line 1\n")])
    assert once(workspace).returncode == 0
    with open(workspace.inbox / "log" / "a.log", "ab") as f:
        f.write(b"line 2\n")
    requeued: List[str] = []
    with Store(workspace.state / "state.db") as store:
        cleaner, remote = _cleaner(workspace, store, CleanupSettings(delete_after=1), on_requeue=requeued.append)
        try:
            res = cleaner.run_pass(time.time() + 3600)
        finally:
            remote.close()
        assert res.held == {"file modified": 1} and requeued == ["log/a.log"]
        assert store.get("log/a.log").state == "pending"
    assert once(workspace, cleanup={"delete_after": "1h"}).returncode == 0
    assert (workspace.inbox / "log" / "a.log").read_bytes() == b"line 1\nline 2\n"
    assert get_bytes(s3_client, workspace.bucket, "log/a.log") == b"line 1\nline 2\n"


def test_dry_run_deletes_nothing(workspace):
    make_files(workspace.inbox, [("cam/a.bin", b"a"), ("b.bin", b"b")])
    assert once(workspace).returncode == 0
    wait_until_due(workspace, 1)
    r = once(workspace, cleanup={"delete_after": "1s", "cleanup_dry_run": "true"})
    assert r.returncode == 0, r.stderr
    assert "Would delete cam/a.bin (1 bytes; S3 has cam/a.bin)" in r.stderr
    assert sorted(p.name for p in workspace.inbox.rglob("*")) == ["a.bin", "b.bin", "cam"]
    st = status(workspace)
    assert st["counts"]["uploaded"] == 2 and st["cleanup"]["files_freed"] == 0
    assert st["cleanup"]["last_pass"]["would_free_files"] == 2


def test_archive_moves_files_keeping_their_relative_paths(workspace, s3_client):
    archive = workspace.tmp / "archive"
    make_files(workspace.inbox, [("cam1/2026/a.mp4", b"footage"), ("b.jpg", b"still")])
    assert once(workspace).returncode == 0
    wait_until_due(workspace, 1)
    r = once(workspace, cleanup={"delete_after": "1s", "cleanup_action": "archive", "archive_directory": archive})
    assert r.returncode == 0, r.stderr
    assert (archive / "cam1" / "2026" / "a.mp4").read_bytes() == b"footage"
    assert (archive / "b.jpg").read_bytes() == b"still"
    assert list(workspace.inbox.iterdir()) == []
    assert status(workspace)["counts"]["archived"] == 2
    assert set(list_keys(s3_client, workspace.bucket)) == {"cam1/2026/a.mp4", "b.jpg"}


def test_low_free_space_deletes_the_oldest_confirmed_files_first_and_never_an_unconfirmed_one(
        workspace, aws_env, caplog):
    now = time.time()
    files = make_files(workspace.inbox, [(f"cam/{n}.mp4", bytes([65 + i]) * 1000)
                                         for i, n in enumerate(("oldest", "older", "newer", "newest"))])
    for i, rel in enumerate(files):
        os.utime(workspace.inbox / rel, (now - 4000 + i * 1000, now - 4000 + i * 1000))
    assert once(workspace).returncode == 0
    # two more files that are not in S3: one waiting, one whose uploads failed
    make_files(workspace.inbox, [("cam/waiting.mp4", b"w" * 1000), ("cam/failed.mp4", b"f" * 1000)])
    capacity = 10_000

    def disk(path: str):
        used = sum(p.stat().st_size for p in workspace.inbox.rglob("*") if p.is_file())
        return (capacity, used, capacity - used)

    with Store(workspace.state / "state.db") as store:
        for rel in ("cam/waiting.mp4", "cam/failed.mp4"):
            st = os.lstat(workspace.inbox / rel)
            store.discover(rel, rel, st.st_size, st.st_mtime_ns, st.st_ino)
        store.start_upload("cam/failed.mp4", 1000, os.lstat(workspace.inbox / "cam/failed.mp4").st_mtime_ns,
                           os.lstat(workspace.inbox / "cam/failed.mp4").st_ino)
        store.fail_upload("cam/failed.mp4", "network", "connection reset", None, park=True)
        # 6000 used, 4000 free; a floor of 5500 needs two files gone
        settings = CleanupSettings(min_free_space=FreeSpace(bytes=5500))
        cleaner, remote = _cleaner(workspace, store, settings, free_space=disk)
        try:
            res = cleaner.run_pass(time.time())
            assert res.mode == "space" and res.freed_files == 2
            assert sorted(p.name for p in (workspace.inbox / "cam").iterdir()) == \
                ["failed.mp4", "newer.mp4", "newest.mp4", "waiting.mp4"]
            # now a floor no deletion of proven files can meet: both remaining proven files go,
            # the two not in S3 stay, and the daemon says so
            settings_high = CleanupSettings(min_free_space=FreeSpace(percent=90))
            cleaner.settings = lambda: settings_high
            with caplog.at_level(logging.ERROR, logger="s3_uploader.cleanup"):
                res = cleaner.run_pass(time.time())
        finally:
            remote.close()
        assert res.freed_files == 2 and res.disk_full_of_unuploaded and res.waiting_files == 2
        assert sorted(p.name for p in (workspace.inbox / "cam").iterdir()) == ["failed.mp4", "waiting.mp4"]
        assert "2 file(s) not yet in S3 are never deleted for space" in caplog.text
    st = status(workspace)
    assert st["cleanup"]["last_pass"]["disk_full_of_unuploaded"] is True
    text = cli("status", "-c", str(workspace.config_path)).stdout
    assert "WARNING: free space 8.0 KB is below min_free_space (9.0 KB)" in text


class ListCounter:
    """Counts the ListObjectsV2 HTTP requests a boto3 client sends."""

    def __init__(self, client):
        self.n = 0
        client.meta.events.register("before-call.s3.ListObjectsV2", self._count)

    def _count(self, **_kw) -> None:
        self.n += 1


def test_a_pass_over_200_files_in_4_folders_costs_4_list_requests_and_batch_limits_hold(workspace, aws_env):
    make_files(workspace.inbox, [(f"cam{i % 4}/f{i:03d}.jpg", b"x" * (i + 1)) for i in range(200)])
    workspace.config(upload={"upload_workers": 4})
    assert cli("once", "-c", str(workspace.config_path), env=workspace.server.env()).returncode == 0
    with Store(workspace.state / "state.db") as store:
        limited = CleanupSettings(delete_after=1, batch_size=30, prefix_batch_size=2)
        cleaner, remote = _cleaner(workspace, store, limited)
        counter = ListCounter(remote.client)
        try:
            res = cleaner.run_pass(time.time() + 60)
            assert res.folders_listed <= 2 and counter.n <= 2 and 0 < res.freed_files <= 30
            freed_limited = res.freed_files
            full = CleanupSettings(delete_after=1)
            cleaner.settings = lambda: full
            counter.n = 0
            res = cleaner.run_pass(time.time() + 60)
        finally:
            remote.close()
        assert counter.n == 4 and res.folders_listed == 4
        assert res.freed_files == 200 - freed_limited
        assert store.counts()["deleted"] == 200
    assert [p for p in workspace.inbox.iterdir()] == []


def test_cleanup_switched_on_by_a_config_reload_applies_without_a_restart(workspace, s3_client):
    import signal

    workspace.config()
    d = workspace.start()
    d.wait_log("Watching")
    make_files(workspace.inbox, [("cam/a.bin", b"a" * 10)])
    d.wait_log(r"Successfully uploaded cam/a\.bin")
    assert (workspace.inbox / "cam" / "a.bin").exists()
    workspace.config(cleanup={"delete_after": "1s", "cleanup_interval": "1s"})
    d.signal(signal.SIGHUP)
    d.wait_log("Configuration reloaded")
    d.wait_log(r"Deleted local copy of cam/a\.bin \(10 bytes; S3 has cam/a\.bin\)")
    assert list(workspace.inbox.iterdir()) == []
    assert list_keys(s3_client, workspace.bucket) == {"cam/a.bin": 10}
    assert d.stop() == 0


def test_a_file_gone_while_s3_lost_its_object_is_uploaded_when_it_comes_back_with_the_same_signature(
        workspace, s3_client):
    make_files(workspace.inbox, [("cam/a.bin", b"precious")])
    assert once(workspace).returncode == 0
    saved = workspace.tmp / "saved.bin"
    os.link(workspace.inbox / "cam" / "a.bin", saved)  # the same inode, size and mtime, to bring back
    s3_client.delete_object(Bucket=workspace.bucket, Key="cam/a.bin")
    (workspace.inbox / "cam" / "a.bin").unlink()  # e.g. moved away, or a sub-mount unmounted
    wait_until_due(workspace, 1)
    r = once(workspace, cleanup={"delete_after": "1s"})
    assert r.returncode == 0, r.stderr
    assert "is gone and S3 does not prove the upload" in r.stderr
    with Store(workspace.state / "state.db", readonly=True) as st:
        assert st.get("cam/a.bin") is None, "the row must not say the file is done"
    os.link(saved, workspace.inbox / "cam" / "a.bin")  # it comes back, same signature
    r = once(workspace, cleanup={"delete_after": "1h"})
    assert r.returncode == 0, r.stderr
    assert get_bytes(s3_client, workspace.bucket, "cam/a.bin") == b"precious"
    assert status(workspace)["counts"]["uploaded"] == 1


def test_a_file_rewritten_with_its_size_and_mtime_restored_is_kept_single_put_or_multipart(workspace, s3_client):
    big = os.urandom(6 * 1024 * 1024)
    make_files(workspace.inbox, [("a.bin", b"AAAA"), ("big.bin", big)])
    upload = {"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB"}
    workspace.config(upload=upload)
    assert cli("once", "-c", str(workspace.config_path), env=workspace.server.env()).returncode == 0
    for name, new in (("a.bin", b"BBBB"), ("big.bin", big[:-1] + bytes([big[-1] ^ 1]))):
        p = workspace.inbox / name
        st = os.lstat(p)
        with open(p, "r+b") as f:  # same inode and size; the mtime put back, as `touch -r` or a copy tool would
            f.write(new)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        now = os.lstat(p)
        assert (now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    wait_until_due(workspace, 1)
    workspace.config(upload=upload, cleanup={"delete_after": "1s"})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    assert "Not deleting a.bin: content differs" in r.stderr and "Not deleting big.bin: content differs" in r.stderr
    assert (workspace.inbox / "a.bin").read_bytes() == b"BBBB"
    assert get_bytes(s3_client, workspace.bucket, "a.bin") == b"BBBB"
    assert get_bytes(s3_client, workspace.bucket, "big.bin") == big[:-1] + bytes([big[-1] ^ 1])

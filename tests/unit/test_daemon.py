"""The daemon's start-up sweep on a MemoryRemote: multipart uploads nobody owns are aborted, ours are
kept, and a server that cannot list them is a warning, not a failure to start.
"""

from __future__ import annotations

from helpers import write_config

from s3_uploader.config import load_config
from s3_uploader.daemon import Daemon
from s3_uploader.remote import MemoryRemote, PutOptions
from s3_uploader.store import Store

MiB = 1024 * 1024


def daemon_on(tmp_path, remote, prefix):
    (tmp_path / "in").mkdir(exist_ok=True)
    cfg = write_config(tmp_path / "c.ini", {"watch": {"directory_to_watch": tmp_path / "in"},
                                             "s3": {"bucket": "b", "prefix": prefix},
                                             "daemon": {"db_path": tmp_path / "s.db"}})
    return Daemon(load_config(cfg), remote=remote, store=Store(tmp_path / "s.db"))


def test_start_up_aborts_only_unowned_uploads_under_a_fixed_prefix(tmp_path):
    remote = MemoryRemote()
    owned = remote.create_multipart("cams/a.mp4", PutOptions())
    orphan = remote.create_multipart("cams/b.mp4", PutOptions())
    outside = remote.create_multipart("camsX/c.mp4", PutOptions())  # shares the letters, not the folder
    d = daemon_on(tmp_path, remote, "cams")
    d.store.discover("a.mp4", "cams/a.mp4", 10, 1, 1)
    d.store.set_multipart("a.mp4", owned, 5 * MiB)
    d.prepare()
    assert set(remote.uploads) == {owned, outside}
    assert orphan not in remote.uploads
    d.store.close()


def test_without_a_fixed_prefix_only_uploads_to_our_own_keys_are_aborted(tmp_path):
    remote = MemoryRemote()
    ours = remote.create_multipart("x/ours.mp4", PutOptions())
    theirs = remote.create_multipart("x/theirs.mp4", PutOptions())
    d = daemon_on(tmp_path, remote, "")
    d.store.discover("x/ours.mp4", "x/ours.mp4", 10, 1, 1)  # its upload id was never recorded (crash)
    assert d.abort_stale_multipart() == 1
    assert set(remote.uploads) == {theirs}
    assert ours not in remote.uploads
    d.store.close()


def test_a_server_without_list_multipart_uploads_is_a_warning_not_a_failure_to_start(tmp_path, caplog):
    class NoListing(MemoryRemote):
        def list_multipart_uploads(self, prefix):
            from s3_uploader.remote import memory_error
            raise memory_error("NotImplemented", "A header you provided implies functionality that is not implemented")

    d = daemon_on(tmp_path, NoListing(), "cams")
    d.prepare()
    assert "Could not look for stale multipart uploads under s3://b/cams/" in caplog.text
    assert "AbortIncompleteMultipartUpload" in caplog.text
    d.store.close()

"""Multipart uploads survive a kill -9: the upload resumes with only the missing parts, never
with parts of another version of the file, and uploads nobody owns are aborted at start-up."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Dict, List

import pytest
from faultproxy import FaultProxy
from helpers import get_bytes, list_keys, write_config

from s3_uploader.config import load_config
from s3_uploader.daemon import Daemon
from s3_uploader.remote import MemoryRemote, PutOptions
from s3_uploader.retry import Failure, decide_retry
from s3_uploader.scanner import FileStat
from s3_uploader.store import Store
from s3_uploader.uploader import Job, Settings, Uploader

MiB = 1024 * 1024
RESUMABLE = {"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB", "max_concurrency": 1,
             "upload_workers": 1}


@pytest.fixture
def proxy(s3_server):
    p = FaultProxy(s3_server.port).start()
    yield p
    p.stop()


def recorded_parts(db: Path) -> int:
    """Parts committed to the state database, read as another process would."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT count(*) FROM parts").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        conn.close()


def kill_after_three_parts(workspace, proxy):
    """Start the daemon, let three parts through, hold the fourth, kill -9 once three are recorded."""
    proxy.hold("UploadPart", part_number=4)
    d = workspace.start()
    db = workspace.state / "state.db"
    d.wait_until(lambda: proxy.held() == 1 and recorded_parts(db) == 3, timeout=60,
                 what="three parts recorded and the fourth in flight",
                 context=lambda: f"held {proxy.held()}, parts recorded {recorded_parts(db)}\n"
                 + "\n".join(map(repr, proxy.select())))
    d.kill()
    proxy.release(drop=True)  # the part in flight never reaches S3
    [upload_id] = {e.upload_id for e in proxy.select("UploadPart")}
    return upload_id


def part_numbers(proxy, upload_id, since=0):
    return sorted(e.part_number for e in proxy.select("UploadPart", upload_id=upload_id, reached=True)[since:])


def test_a_multipart_upload_killed_after_three_parts_resumes_sending_only_the_missing_five(
        workspace, proxy, s3_client):
    data = os.urandom(40 * MiB)
    (workspace.inbox / "big.bin").write_bytes(data)
    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload=RESUMABLE)
    upload_id = kill_after_three_parts(workspace, proxy)
    assert part_numbers(proxy, upload_id) == [1, 2, 3]
    assert list_keys(s3_client, workspace.bucket) == {}

    d = workspace.start()
    d.wait_log(r"Successfully uploaded big\.bin", timeout=90)
    assert "Resuming multipart upload of big.bin: 3 of 8 parts already in S3" in d.output()
    assert part_numbers(proxy, upload_id, since=3) == [4, 5, 6, 7, 8]
    assert proxy.count("UploadPart", reached=True) == 8  # 8 parts, each sent once
    assert proxy.count("CreateMultipartUpload") == 1
    assert proxy.count("ListParts") == 1
    assert get_bytes(s3_client, workspace.bucket, "big.bin") == data
    assert s3_client.list_multipart_uploads(Bucket=workspace.bucket).get("Uploads", []) == []
    assert d.stop() == 0


def test_a_file_rewritten_while_the_daemon_was_down_is_not_completed_with_the_old_parts(
        workspace, proxy, s3_client):
    path = workspace.inbox / "rewritten.bin"
    path.write_bytes(os.urandom(40 * MiB))
    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload=RESUMABLE)
    upload_id = kill_after_three_parts(workspace, proxy)
    new = os.urandom(40 * MiB)  # same size, new bytes, new mtime
    path.write_bytes(new)

    d = workspace.start()
    d.wait_log(r"Successfully uploaded rewritten\.bin", timeout=90)
    assert get_bytes(s3_client, workspace.bucket, "rewritten.bin") == new
    # the old upload is aborted, not reused: its parts hold the old bytes
    assert part_numbers(proxy, upload_id) == [1, 2, 3]
    assert proxy.count("AbortMultipartUpload", upload_id=upload_id) == 1
    [fresh] = {e.upload_id for e in proxy.select("UploadPart")} - {upload_id}
    assert part_numbers(proxy, fresh) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert s3_client.list_multipart_uploads(Bucket=workspace.bucket).get("Uploads", []) == []
    assert d.stop() == 0


def test_stale_multipart_uploads_under_the_prefix_are_aborted_at_start_and_owned_ones_kept(
        workspace, s3_client):
    b = workspace.bucket
    stale = s3_client.create_multipart_upload(Bucket=b, Key="site/orphan.mp4")["UploadId"]
    other = s3_client.create_multipart_upload(Bucket=b, Key="elsewhere/theirs.mp4")["UploadId"]
    workspace.config(s3={"prefix": "site"})
    d = workspace.start()
    d.wait_log(r"Aborted stale multipart upload of site/orphan\.mp4 \(upload id " + stale)
    assert d.stop() == 0
    left = {(u["Key"], u["UploadId"]) for u in s3_client.list_multipart_uploads(Bucket=b).get("Uploads", [])}
    assert left == {("elsewhere/theirs.mp4", other)}


# -- unit level: the start-up sweep's decisions, on a MemoryRemote ------------------------------------------

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
            from s3_uploader.remote import MemoryError_
            raise MemoryError_("NotImplemented", "A header you provided implies functionality that is not implemented")

    d = daemon_on(tmp_path, NoListing(), "cams")
    d.prepare()
    assert "Could not look for stale multipart uploads under s3://b/cams/" in caplog.text
    assert "AbortIncompleteMultipartUpload" in caplog.text
    d.store.close()


def test_an_outage_is_never_a_reason_to_park_in_the_daemon_but_counts_in_once():
    for kind in ("network", "throttled"):
        f = Failure(kind, "endpoint down")
        d = decide_retry(f, 50, 3, 1, 300, 3600, rng=lambda: 1.0, patient=True)
        assert not d.park and d.delay == 300
        assert decide_retry(f, 4, 3, 1, 300, 3600, patient=False).park
    assert decide_retry(Failure("server", "500"), 4, 3, 1, 300, 3600, patient=True).park


# -- unit level: resuming on a MemoryRemote -------------------------------------------------------------------

SETTINGS = Settings(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=1,
                    put_options=PutOptions(), follow_symlinks=False)


class FlakyRemote(MemoryRemote):
    """A MemoryRemote whose next calls of an operation fail as scripted: ``fail[op] = [exc, ...]``.
    An exception with ``after = True`` fails after the call took effect (a lost answer)."""

    def __init__(self):
        super().__init__()
        self.fail: Dict[str, List[BaseException]] = {}

    def _maybe(self, op: str, call):
        script = self.fail.get(op)
        exc = script.pop(0) if script else None
        if exc is not None and not getattr(exc, "after", False):
            raise exc
        result = call()
        if exc is not None:
            raise exc
        return result

    def upload_part(self, *a, **kw):
        return self._maybe("upload_part", lambda: super(FlakyRemote, self).upload_part(*a, **kw))

    def complete_multipart(self, *a, **kw):
        return self._maybe("complete_multipart", lambda: super(FlakyRemote, self).complete_multipart(*a, **kw))

    def list_parts(self, *a, **kw):
        return self._maybe("list_parts", lambda: super(FlakyRemote, self).list_parts(*a, **kw))


def lost_answer() -> BaseException:
    exc = ConnectionResetError("connection reset by peer")
    exc.after = True  # type: ignore[attr-defined]
    return exc


@pytest.fixture
def flaky(tmp_path):
    store = Store(tmp_path / "s.db")
    remote = FlakyRemote()
    up = Uploader(remote, store, lambda: SETTINGS, part_workers=1)
    data = os.urandom(12 * MiB + 5)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    st = os.stat(path)
    store.discover_many([("big.bin", "big.bin", st.st_size, st.st_mtime_ns, st.st_ino)])
    yield store, remote, up, data, FileStat("big.bin", st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev), path
    up.close()
    store.close()


def attempt(store, up, fstat, path, n):
    """One attempt, as the daemon makes it: the job carries what the row records."""
    store.start_upload("big.bin", fstat.size, fstat.mtime_ns, fstat.ino)
    rec = store.get("big.bin")
    o = up.upload(Job("big.bin", str(path), "big.bin", fstat, n, rec.upload_id, rec.part_size))
    if o.kind == "failed":
        store.fail_upload("big.bin", o.failure.kind, o.failure.message, 0.0, park=False)
    return o


def test_an_upload_completed_just_before_its_answer_was_lost_is_recognised_and_not_sent_again(flaky):
    store, remote, up, data, fstat, path = flaky
    remote.fail["complete_multipart"] = [lost_answer()]
    assert attempt(store, up, fstat, path, 1).kind == "failed"
    assert remote.objects["big.bin"][0] == data  # S3 completed it; we never heard
    sent = remote.calls["upload_part"]
    o = attempt(store, up, fstat, path, 2)
    assert o.kind == "uploaded"
    assert remote.calls["upload_part"] == sent == 3  # nothing sent again
    assert remote.calls["head"] == 1 and store.get("big.bin").upload_id is None


def test_a_throttled_list_parts_keeps_the_upload_and_every_part_already_sent(flaky):
    from s3_uploader.remote import MemoryError_
    store, remote, up, data, fstat, path = flaky
    remote.fail["upload_part"] = [None, None, ConnectionResetError("reset")]  # parts 1 and 2 arrive
    assert attempt(store, up, fstat, path, 1).kind == "failed"
    remote.fail["list_parts"] = [MemoryError_("SlowDown", "Please reduce your request rate.")]
    o = attempt(store, up, fstat, path, 2)
    assert o.kind == "failed" and o.failure.kind == "throttled"
    rec = store.get("big.bin")
    assert rec.upload_id is not None and len(store.parts("big.bin", rec.upload_id)) == 2
    assert attempt(store, up, fstat, path, 3).kind == "uploaded"
    assert remote.calls["upload_part"] == 3  # 1 and 2 (part 3 never arrived), then only 3
    assert remote.calls["create_multipart"] == 1
    assert remote.objects["big.bin"][0] == data

"""What proves an upload, end to end: the daemon against SeaweedFS behind tests/faultproxy.py answering
as AWS does for a bucket with default SSE-KMS, and against what SeaweedFS and ``rclone serve s3``
really list for multipart objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest
from faultproxy import FaultProxy
from helpers import cli, get_bytes, list_keys, make_files

from s3_uploader.cleanup import etag_matches
from s3_uploader.remote import BotoRemote, PutOptions, multipart_etag, obstore_available
from s3_uploader.scanner import FileStat
from s3_uploader.store import Record, Store
from s3_uploader.uploader import Job, Settings, Uploader

MiB = 1024 * 1024


def _rec(md5, etag) -> Record:
    return Record(rel="a.bin", key="a.bin", state="uploaded", size=10, mtime_ns=5, inode=7, md5=md5, etag=etag,
                  uploaded_at=1.0)


def _job(path, rel):
    st = os.stat(path)
    return Job(rel, str(path), rel, FileStat(rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev))


# -- the daemon against AWS's answers for a KMS bucket ----------------------------------------------

@pytest.mark.parametrize("transport", ["boto3", "obstore"])
def test_a_bucket_with_default_sse_kms_gets_every_file_uploaded_and_cleaned_up_and_no_object_deleted(
        workspace, s3_server, s3_client, transport):
    """``sse`` is empty in our config; the bucket encrypts by default, so every answer is AWS's for
    SSE-KMS (opaque ETags, ``x-amz-server-side-encryption: aws:kms``). Before: every file below
    ``multipart_threshold`` failed with "ETag is not the MD5" (and obstore deleted the object)."""
    if transport == "obstore" and not obstore_available():
        pytest.skip("obstore is not installed on this Python (it needs 3.11): boto3 is tested")
    rng = random.Random(11)
    spec = [(f"cam/s{i}.bin", rng.randbytes(rng.randint(0, 60_000))) for i in range(12)]
    spec += [("cam/streamed.bin", rng.randbytes(2 * MiB + 1)), ("big/clip.mp4", rng.randbytes(11 * MiB + 3))]
    files = make_files(workspace.inbox, spec)
    with FaultProxy(s3_server.port, kms=True) as proxy:
        workspace.config(s3={"endpoint_url": proxy.endpoint, "transport": transport},
                         upload={"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB"},
                         cleanup={"delete_after": "0.001s", "cleanup_interval": "1s"})
        r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env(), timeout=120)
        assert proxy.count("DeleteObject") == 0, "an object stored correctly was deleted"
        assert r.returncode == 0, r.stderr[-4000:]
        assert proxy.count("HeadObject", reached=True) >= len(files)  # each proven by a HEAD
        # the pass at the end of 'once' may find the last files a millisecond short of due: a second
        # 'once' uploads nothing and cleans up the rest, each proven by the ETag recorded at upload
        puts = proxy.count("PutObject") + proxy.count("UploadPart")
        r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env(), timeout=120)
        assert r.returncode == 0, r.stderr[-4000:]
        assert proxy.count("PutObject") + proxy.count("UploadPart") == puts
        assert proxy.count("DeleteObject") == 0 and proxy.count("AbortMultipartUpload") == 0
    assert list_keys(s3_client, workspace.bucket) == {rel: len(data) for rel, data in files.items()}
    for rel, data in files.items():
        assert get_bytes(s3_client, workspace.bucket, rel) == data, rel
        assert not (workspace.inbox / rel).exists(), f"{rel} was not cleaned up: {r.stderr[-3000:]}"
    status = json.loads(cli("status", "--json", "-c", str(workspace.config_path)).stdout)
    assert status["counts"].get("deleted") == len(files) and not status["counts"].get("parked"), status


@pytest.mark.parametrize("transport", ["boto3", "obstore"])
def test_the_same_opaque_etags_on_answers_that_say_the_object_is_not_encrypted_are_never_recorded_as_uploaded(
        workspace, s3_server, s3_client, transport):
    """The reverse of the KMS bucket: an ETag that is not the MD5 on an object that is not KMS- or
    SSE-C-encrypted says S3 stores other bytes; no file is recorded, none is deleted, locally or
    in the bucket."""
    if transport == "obstore" and not obstore_available():
        pytest.skip("obstore is not installed on this Python (it needs 3.11): boto3 is tested")
    files = make_files(workspace.inbox, [("cam/small.bin", b"s" * 3000), ("cam/streamed.bin", b"m" * (2 * MiB)),
                                         ("big/clip.mp4", os.urandom(11 * MiB))])
    with FaultProxy(s3_server.port, kms=True) as proxy:
        proxy.kms_header = False
        workspace.config(s3={"endpoint_url": proxy.endpoint, "transport": transport},
                         upload={"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB", "max_retries": 1,
                                 "retry_backoff_base": "0.1s", "retry_backoff_max": "0.1s"},
                         cleanup={"delete_after": "0.001s"})
        r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env(), timeout=120)
        assert proxy.count("DeleteObject") == 0
    assert r.returncode == 1, r.stderr[-4000:]
    assert "is not encrypted with SSE-KMS or SSE-C" in r.stderr
    status = json.loads(cli("status", "--json", "-c", str(workspace.config_path)).stdout)
    assert status["counts"].get("parked") == len(files) and not status["counts"].get("uploaded"), status
    for rel in files:
        assert (workspace.inbox / rel).exists()


# -- 8c: what each server lists for a multipart object -------------------------------------------

def test_a_multipart_upload_records_the_etag_the_listing_shows_and_an_older_record_is_not_proven_by_size(
        s3_server, bucket, tmp_path):
    """SeaweedFS lists Complete's ``md5-N``; ``rclone serve s3`` (S3U_TEST_SERVER=rclone) lists the
    whole object's MD5 though Complete answered ``md5-N``. Either way the row now records what the
    listing shows and cleanup proves it; a row holding Complete's ``md5-N`` on rclone was proven by
    the size alone before, and is now not proven (the file is uploaded again)."""
    remote = BotoRemote(bucket, endpoint_url=s3_server.endpoint, region="us-east-1",
                        credentials_file=_credentials(s3_server, tmp_path), profile="t")
    store = Store(tmp_path / "s.db")
    settings = Settings(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2,
                        put_options=PutOptions(), follow_symlinks=False)
    up = Uploader(remote, store, lambda: settings)
    try:
        data = os.urandom(11 * MiB)
        (tmp_path / "big.bin").write_bytes(data)
        job = _job(tmp_path / "big.bin", "big.bin")
        store.discover_many([("big.bin", "big.bin", len(data), job.stat.mtime_ns, job.stat.ino)])
        store.start_upload("big.bin", len(data), job.stat.mtime_ns, job.stat.ino)
        o = up.upload(job)
        assert o.kind == "uploaded", o
        store.finish_upload("big.bin", len(data), job.stat.mtime_ns, job.stat.ino, o.md5, o.etag)
        listed = {i.key: i for i in remote.list_folder("")}["big.bin"]
        assert listed.size == len(data) and etag_matches(store.get("big.bin"), listed.etag) is True
        composite = multipart_etag([hashlib.md5(data[i:i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB)])
        older = etag_matches(_rec(None, composite), listed.etag)  # the row as recorded before
        if s3_server.kind == "rclone":
            assert listed.etag == hashlib.md5(data).hexdigest() and older is False
        else:
            assert listed.etag == composite and older is True
    finally:
        up.close()
        store.close()
        remote.close()


def _credentials(server, tmp_path) -> str:
    p = tmp_path / "credentials"
    p.write_text(f"[t]\naws_access_key_id = {server.access_key}\naws_secret_access_key = {server.secret_key}\n")
    return str(p)

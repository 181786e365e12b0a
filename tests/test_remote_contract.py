"""One contract, every implementation of the narrow S3 interface: the in-memory fake and boto3
against the real S3-compatible server. A behaviour the daemon relies on is asserted here once."""
from __future__ import annotations

import hashlib
import os

import pytest

from s3_uploader.remote import BotoRemote, MemoryRemote, PutOptions, RemoteError, multipart_etag

MiB = 1024 * 1024


@pytest.fixture(params=["memory", "boto3"])
def remote(request):
    if request.param == "memory":
        r = MemoryRemote("contract-bucket")
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("bucket")
        r = BotoRemote(bucket, endpoint_url=server.endpoint, **_creds(server))
    yield r
    r.close()


def _creds(server):
    # the remote reads the AWS chain; point it at a credentials file like a user would
    import tempfile
    d = tempfile.mkdtemp()
    p = os.path.join(d, "credentials")
    with open(p, "w") as f:
        f.write(f"[contract]\naws_access_key_id = {server.access_key}\naws_secret_access_key = {server.secret_key}\n")
    return {"credentials_file": p, "profile": "contract", "region": "us-east-1"}


def test_put_returns_the_md5_etag_and_head_confirms_size(remote):
    data = os.urandom(1000)
    etag = remote.put_object("f/a.bin", data, len(data), hashlib.md5(data).digest(), PutOptions())
    assert etag == hashlib.md5(data).hexdigest()
    info = remote.head("f/a.bin")
    assert (info.size, info.etag) == (1000, etag)
    assert remote.head("f/missing.bin") is None


def test_a_wrong_content_md5_is_refused(remote):
    data = b"payload"
    with pytest.raises(Exception) as ei:
        remote.put_object("f/bad.bin", data, len(data), hashlib.md5(b"other").digest(), PutOptions())
    assert ei.value.response["Error"]["Code"] in ("BadDigest", "InvalidDigest")
    assert remote.head("f/bad.bin") is None


def test_list_folder_lists_only_that_folder(remote):
    for key in ("d/1.txt", "d/2.txt", "d/sub/3.txt", "e/4.txt"):
        remote.put_object(key, b"x", 1, hashlib.md5(b"x").digest(), PutOptions())
    assert sorted(o.key for o in remote.list_folder("d/")) == ["d/1.txt", "d/2.txt"]
    assert all(o.size == 1 and o.etag == hashlib.md5(b"x").hexdigest() for o in remote.list_folder("d/"))


def test_delete_removes_the_object(remote):
    remote.put_object("g/x", b"x", 1, hashlib.md5(b"x").digest(), PutOptions())
    remote.delete("g/x")
    assert remote.head("g/x") is None


def test_multipart_round_trip_with_listparts_and_the_aws_style_etag(remote):
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1234)]
    uid = remote.create_multipart("m/big.bin", PutOptions())
    etags = []
    for n, p in enumerate(parts, 1):
        etags.append((n, remote.upload_part("m/big.bin", uid, n, p, len(p), hashlib.md5(p).digest())))
    listed = remote.list_parts("m/big.bin", uid)
    assert {n: s for n, (s, _e) in listed.items()} == {1: 5 * MiB, 2: 5 * MiB, 3: 1234}
    assert any(u.upload_id == uid for u in remote.list_multipart_uploads("m/"))
    etag = remote.complete_multipart("m/big.bin", uid, etags)
    digests = [hashlib.md5(p).digest() for p in parts]
    # SeaweedFS and AWS give md5-of-md5s; servers that give the whole-file MD5 are handled by a HEAD
    assert etag in (multipart_etag(digests), hashlib.md5(b"".join(parts)).hexdigest())
    assert remote.head("m/big.bin").size == 10 * MiB + 1234


def test_abort_removes_an_open_multipart_upload(remote):
    uid = remote.create_multipart("m/aborted.bin", PutOptions())
    remote.abort_multipart("m/aborted.bin", uid)
    assert all(u.upload_id != uid for u in remote.list_multipart_uploads("m/"))


def test_check_access_names_a_missing_bucket(remote, request):
    remote.check_access()
    if isinstance(remote, MemoryRemote):
        missing = MemoryRemote("nope", exists=False)
    else:
        server = request.getfixturevalue("s3_server")
        missing = BotoRemote("no-such-bucket-here", endpoint_url=server.endpoint, **_creds(server))
    with pytest.raises(RemoteError) as ei:
        missing.check_access()
    assert "no such bucket" in ei.value.reason
    missing.close()

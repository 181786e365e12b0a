"""What each object carries, against the real server, on every upload path: Content-Type, the mtime
(rclone's name and format), metadata and tags, Object Lock, a stored checksum; ``check`` on Object
Lock; ``ls`` showing them.

The paths: a small file through the asyncio obstore sender, a small file by boto3 (one PUT from
memory), a streamed PUT (over 1 MiB, under the multipart threshold), a multipart upload, and a
multipart upload resumed after a kill -9. SeaweedFS verifies and stores every checksum algorithm and
has Object Lock; ``rclone serve s3`` (S3U_TEST_SERVER=rclone) keeps Content-Type and metadata but has
no tagging, does not enforce a lock and keeps no multipart checksum, which the assertions say.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
from helpers import cannot_run, cli, get_bytes, once, recorded_parts

from s3_uploader import objects
from s3_uploader.objects import mtime_text

MiB = 1024 * 1024
HOST = objects.hostname()
# one file per path: (relative path, size); the multipart threshold is 5 MiB
PATHS = {"small": ("cam/clip.MP4", 4096), "streamed": ("logs/day.log", 2 * MiB + 17),
         "multipart": ("cam/long.mov", 11 * MiB + 5)}
ATTRS = {"content_types": ".bvr=video/x-bvr", "metadata": "site={hostname}, camera-group=north",
         "tags": "retention=evidence, host={hostname}"}
MULTIPART = {"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB"}


def head(client, bucket: str, key: str) -> Dict[str, Any]:
    return client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")


def tags_of(server, client, bucket: str, key: str) -> Optional[Dict[str, str]]:
    """The object's tags; None on rclone, which has no tagging."""
    if server.kind == "rclone":
        return None
    return {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


def metadata_of(h: Dict[str, Any]) -> Dict[str, str]:
    return {k.lower(): v for k, v in h["Metadata"].items()}  # rclone answers 'Mtime'


def write(inbox: Path, rel: str, size: int) -> bytes:
    data = os.urandom(size)
    p = inbox / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    return data


def assert_carries(ws, client, rel: str, ctype: str, data: bytes) -> Dict[str, Any]:
    h = head(client, ws.bucket, rel)
    assert h["ContentType"] == ctype, rel
    assert metadata_of(h) == {"mtime": "1700000000.123456789", "site": HOST, "camera-group": "north"}, rel
    assert metadata_of(h)["mtime"] == mtime_text((ws.inbox / rel).stat().st_mtime_ns)
    tags = tags_of(ws.server, client, ws.bucket, rel)
    assert tags in (None, {"retention": "evidence", "host": HOST}), rel
    assert get_bytes(client, ws.bucket, rel) == data
    return h


@pytest.mark.parametrize("transport", ["auto", "boto3"])
def test_content_type_mtime_metadata_and_tags_reach_every_upload_path(workspace, s3_client, transport):
    """auto: the small file goes by the obstore sender; boto3: by one boto3 PUT from memory."""
    files = {rel: write(workspace.inbox, rel, size) for rel, size in PATHS.values()}
    files["x/cam7.bvr"] = write(workspace.inbox, "x/cam7.bvr", 100)
    r = once(workspace, s3={**ATTRS, "transport": transport}, upload=MULTIPART)
    assert r.returncode == 0, r.stderr
    for rel, ctype in (("cam/clip.MP4", "video/mp4"), ("logs/day.log", "text/plain"),
                       ("cam/long.mov", "video/quicktime"), ("x/cam7.bvr", "video/x-bvr")):
        assert_carries(workspace, s3_client, rel, ctype, files[rel])


def test_a_file_with_no_known_extension_is_octet_stream_and_still_carries_its_mtime(workspace, s3_client):
    write(workspace.inbox, "rec.dat", 10)
    assert once(workspace).returncode == 0
    h = head(s3_client, workspace.bucket, "rec.dat")
    assert h["ContentType"] == "application/octet-stream"
    assert metadata_of(h) == {"mtime": "1700000000.123456789"}


def locked_bucket(server) -> str:
    name = f"locked-{secrets.token_hex(4)}"
    server.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.mark.parametrize("algorithm", ["crc64nvme", "crc32c", "sha256"])
def test_object_lock_legal_hold_and_a_stored_checksum_reach_every_upload_path(workspace, s3_client, algorithm):
    workspace.bucket = locked_bucket(workspace.server)
    files = {rel: write(workspace.inbox, rel, size) for rel, size in PATHS.values()}
    before = time.time()
    r = once(workspace, s3={**ATTRS, "object_lock_mode": "governance", "object_lock_retain": "2d",
                            "object_lock_legal_hold": "true", "checksum_algorithm": algorithm}, upload=MULTIPART)
    after = time.time()
    assert r.returncode == 0, r.stderr
    name = "Checksum" + algorithm.upper()
    for rel, size in PATHS.values():
        h = assert_carries(workspace, s3_client, rel, objects.ObjectPolicy().content_type(rel), files[rel])
        assert h["ObjectLockMode"] == "GOVERNANCE" and h["ObjectLockLegalHoldStatus"] == "ON", rel
        until = h["ObjectLockRetainUntilDate"].timestamp()
        assert before + 2 * 86400 - 1 <= until <= after + 2 * 86400 + 1, rel
        if size < 5 * MiB:  # the whole object's checksum, computed by the server from the bytes it stored
            assert h[name] == objects.checksum_of(algorithm.upper(), files[rel]), rel
        elif workspace.server.kind == "seaweedfs":
            assert h["ChecksumType"] == ("COMPOSITE" if algorithm == "sha256" else "FULL_OBJECT"), rel
            if algorithm != "sha256":  # a full-object CRC: the same value as over the whole file
                assert h[name] == objects.checksum_of(algorithm.upper(), files[rel]), rel
    if workspace.server.kind == "seaweedfs":  # the lock holds: the object version cannot be deleted
        version = h.get("VersionId") or "null"
        with pytest.raises(Exception, match="AccessDenied"):
            s3_client.delete_object(Bucket=workspace.bucket, Key="cam/long.mov", VersionId=version)


def test_a_resumed_multipart_upload_keeps_every_attribute_and_its_checksum(workspace, proxy, s3_client):
    workspace.bucket = locked_bucket(workspace.server)
    data = write(workspace.inbox, "cam/resumed.mp4", 40 * MiB)
    workspace.config(s3={**ATTRS, "endpoint_url": proxy.endpoint, "object_lock_mode": "compliance",
                         "object_lock_retain": "1d", "checksum_algorithm": "crc32c"},
                     upload={**MULTIPART, "max_concurrency": 1, "upload_workers": 1})
    proxy.hold("UploadPart", part_number=4)
    d = workspace.start()
    db = workspace.state / "state.db"
    d.wait_until(lambda: proxy.held() == 1 and recorded_parts(db) == 3, timeout=60,
                 what="three parts recorded and the fourth in flight")
    d.kill()
    proxy.release(drop=True)
    d = workspace.start()
    d.wait_log(r"Successfully uploaded cam/resumed\.mp4", timeout=90)
    assert "Resuming multipart upload of cam/resumed.mp4: 3 of 8 parts already in S3" in d.output()
    assert d.stop() == 0
    assert proxy.count("CreateMultipartUpload") == 1
    h = assert_carries(workspace, s3_client, "cam/resumed.mp4", "video/mp4", data)
    assert h["ObjectLockMode"] == "COMPLIANCE"
    if workspace.server.kind == "seaweedfs":
        assert h["ChecksumCRC32C"] == objects.checksum_of("CRC32C", data)


def test_an_object_whose_bytes_do_not_match_its_checksum_is_refused_by_the_server(s3_server, s3_client, bucket):
    """What makes the checksum worth sending: the server verifies it before storing (rclone does not)."""
    data = b"evidence" * 100
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    wrong = base64.b64encode(b"\0" * 8).decode()
    if s3_server.kind == "rclone":
        s3_client.put_object(Bucket=bucket, Key="k", Body=data, ContentMD5=md5, ChecksumCRC64NVME=wrong)
        return
    with pytest.raises(Exception, match="BadDigest|InvalidRequest|XAmzContentChecksumMismatch"):
        s3_client.put_object(Bucket=bucket, Key="k", Body=data, ContentMD5=md5, ChecksumCRC64NVME=wrong)
    assert s3_client.list_objects_v2(Bucket=bucket).get("Contents", []) == []


def test_check_says_whether_the_bucket_has_object_lock_and_refuses_a_lock_setting_without_it(workspace):
    workspace.config(s3={"object_lock_mode": "governance", "object_lock_retain": "1d"})
    r = cli("check", "-c", str(workspace.config_path), env=workspace.server.env())
    lines = [ln for ln in r.stdout.splitlines() if "Object Lock" in ln]
    if workspace.server.kind == "seaweedfs":
        assert r.returncode == 2, r.stdout + r.stderr
        assert lines == ["[s3] object_lock_mode = governance, but the bucket has no Object Lock (it can only be "
                         "enabled on a bucket made with it, or by AWS support): remove the lock settings or use a "
                         "bucket with Object Lock"]
    workspace.bucket = locked_bucket(workspace.server)
    workspace.config(s3={"object_lock_mode": "governance", "object_lock_retain": "1d"})
    r = cli("check", "-c", str(workspace.config_path), env=workspace.server.env())
    if workspace.server.kind == "seaweedfs":
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Object Lock: enabled on the bucket, new objects locked: governance" in r.stdout


def test_ls_shows_the_content_type_and_long_and_json_show_metadata_and_tags(workspace, s3_client):
    write(workspace.inbox, "cam/a.jpg", 1000)
    assert once(workspace, s3=ATTRS).returncode == 0
    env = workspace.server.env()
    r = cli("ls", "-c", str(workspace.config_path), env=env)
    assert r.returncode == 0, r.stderr
    assert "image/jpeg" in r.stdout and "cam/a.jpg" in r.stdout
    r = cli("ls", "--long", "-c", str(workspace.config_path), env=env)
    assert r.returncode == 0, r.stderr
    assert f"metadata: camera-group=north, mtime=1700000000.123456789, site={HOST}" in r.stdout.replace(
        "Camera-Group", "camera-group").replace("Mtime", "mtime").replace("Site", "site")
    if workspace.server.kind == "seaweedfs":
        assert f"tags: host={HOST}, retention=evidence" in r.stdout
    r = cli("ls", "--json", "-c", str(workspace.config_path), env=env)
    [row] = [json.loads(line) for line in r.stdout.splitlines()]
    assert row["key"] == "cam/a.jpg" and row["content_type"] == "image/jpeg" and row["size"] == 1000
    assert {k.lower(): v for k, v in row["metadata"].items()}["site"] == HOST
    assert row["tags"] == (None if workspace.server.kind == "rclone" else {"retention": "evidence", "host": HOST})
    assert dt.datetime.fromisoformat(row["last_modified"])


def test_obstore_sends_content_type_metadata_and_tags_and_leaves_a_lock_to_boto3(s3_server, s3_client, aws_env):
    """The small-file transport itself, both its calls: what it can send (Content-Type, metadata,
    tags) it sends; a lock or checksum it cannot send, so such a PUT goes by boto3 and still has them."""
    import asyncio

    from s3_uploader.remote import ObstoreRemote, PutOptions, obstore_available
    if not obstore_available():
        if sys.version_info < (3, 11):
            pytest.skip("obstore needs Python >= 3.11; boto3 sends everything there")
        cannot_run("obstore is not installed although this Python supports it (pip install obstore)")
    bucket = locked_bucket(s3_server)
    r = ObstoreRemote(bucket, endpoint_url=s3_server.endpoint, region="us-east-1")
    plain = objects.ObjectPolicy(metadata=(("site", "{hostname}"),), tags=(("k", "v 1"),))
    locked = objects.ObjectPolicy(lock_mode="governance", lock_retain=3600, checksum="sha256")
    data = os.urandom(3000)
    md5 = hashlib.md5(data).digest()
    try:
        opts = PutOptions().for_object(plain.attributes("a.jpg", 1_700_000_000_500_000_000, time.time()))
        assert opts.obstore_ok
        r.put_object("sync.jpg", data, len(data), md5, opts)

        async def soon():
            answer = asyncio.get_running_loop().create_future()
            r.put_object_soon("soon.jpg", data, md5, opts, lambda etag, exc: answer.set_result((etag, exc)))
            return await answer
        assert asyncio.run(soon()) == (md5.hex(), None)
        for key in ("sync.jpg", "soon.jpg"):
            h = head(s3_client, bucket, key)
            assert h["ContentType"] == "image/jpeg", key
            assert metadata_of(h) == {"site": HOST, "mtime": "1700000000.5"}, key
            assert tags_of(s3_server, s3_client, bucket, key) in (None, {"k": "v 1"}), key
        attrs = locked.attributes("b.bin", 0, time.time())
        opts = PutOptions().for_object(attrs, objects.checksum_of("SHA256", data))
        assert not opts.obstore_ok
        r.put_object("locked.bin", data, len(data), md5, opts)
        h = head(s3_client, bucket, "locked.bin")
        assert h["ObjectLockMode"] == "GOVERNANCE" and h["ChecksumSHA256"] == opts.checksum
    finally:
        r.close()


def test_a_reload_gives_new_uploads_the_new_tags_metadata_and_content_types(workspace, s3_client):
    workspace.config(s3={"tags": "batch=one", "metadata": "batch=one"})
    d = workspace.start()
    d.wait_log("Watching")
    write(workspace.inbox, "a.bvr", 10)
    d.wait_log(r"Successfully uploaded a\.bvr")
    text = workspace.config_path.read_text()
    workspace.config_path.write_text(text.replace("tags = batch=one", "tags = batch=two")
                                     .replace("metadata = batch=one", "metadata = batch=two\n"
                                              "content_types = .bvr=video/x-bvr"))
    d.wait_log(r"Configuration reloaded; changed: .*\[s3\] metadata")
    write(workspace.inbox, "b.bvr", 10)
    d.wait_log(r"Successfully uploaded b\.bvr")
    assert d.stop() == 0
    a, b = head(s3_client, workspace.bucket, "a.bvr"), head(s3_client, workspace.bucket, "b.bvr")
    assert (a["ContentType"], metadata_of(a)["batch"]) == ("application/octet-stream", "one")
    assert (b["ContentType"], metadata_of(b)["batch"]) == ("video/x-bvr", "two")
    assert tags_of(workspace.server, s3_client, workspace.bucket, "a.bvr") in (None, {"batch": "one"})
    assert tags_of(workspace.server, s3_client, workspace.bucket, "b.bvr") in (None, {"batch": "two"})

"""Cleanup's proof by the checksum S3 stores (issue 14), against the real server: an upload with
``checksum_algorithm`` records the checksum the server answered, and cleanup removes the file only
after one HEAD (``ChecksumMode=ENABLED``) shows it again; an object replaced behind our back whose
listing (size, multipart ETag) still matches but whose stored checksum differs keeps its file.

SeaweedFS stores sha256, crc32c and crc64nvme and answers them; ``rclone serve s3`` answers no
checksum to a PUT and keeps none for a multipart object, so there no row records one and files are
proven by size and ETag as before."""
from __future__ import annotations

import base64
import hashlib
import os
import time

from helpers import get_bytes, once, status, wait_for

from s3_uploader import objects
from s3_uploader.store import Store

MiB = 1024 * 1024
MULTIPART = {"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB"}


def rows(ws):
    with Store(ws.state / "state.db", readonly=True) as st:
        return {r.rel: r for r in st.iter_all()}


def wait_due(ws) -> None:
    newest = max(r.uploaded_at or 0.0 for r in rows(ws).values())
    wait_for(lambda: time.time() >= newest + 1.01, timeout=6, what="the uploads to be a second old")


def write(ws, rel: str, data: bytes) -> bytes:
    p = ws.inbox / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return data


def test_a_file_uploaded_with_a_checksum_is_deleted_after_one_head_shows_that_checksum(workspace, proxy):
    small = write(workspace, "cam/a.jpg", os.urandom(4096))
    big = write(workspace, "cam/long.mov", os.urandom(11 * MiB + 5))
    s3 = {"endpoint_url": proxy.endpoint, "checksum_algorithm": "crc32c"}
    assert once(workspace, s3=s3, upload=MULTIPART).returncode == 0
    got = rows(workspace)
    if workspace.server.kind == "seaweedfs":  # full-object CRCs, the multipart one over the whole object
        assert got["cam/a.jpg"].checksum == f"CRC32C:FULL_OBJECT:{objects.checksum_of('CRC32C', small)}"
        assert got["cam/long.mov"].checksum == f"CRC32C:FULL_OBJECT:{objects.checksum_of('CRC32C', big)}"
    else:  # rclone answers none (a PUT's stored one is not in its answer): nothing recorded, proven as before
        assert got["cam/a.jpg"].checksum is None and got["cam/long.mov"].checksum is None
    # uploaded by the default (none): nothing recorded, and cleanup asks nothing more of it
    write(workspace, "logs/x.log", b"no checksum asked")
    assert once(workspace, s3={"endpoint_url": proxy.endpoint}).returncode == 0
    assert rows(workspace)["logs/x.log"].checksum is None
    wait_due(workspace)
    heads = proxy.count("HeadObject")
    r = once(workspace, s3={"endpoint_url": proxy.endpoint}, cleanup={"delete_after": "1s"})
    assert r.returncode == 0, r.stderr
    assert not any(workspace.inbox.rglob("*.*")), r.stderr
    recorded = sum(1 for row in got.values() if row.checksum)
    assert proxy.count("HeadObject") - heads == recorded  # one HEAD per file that records a checksum, no more
    assert status(workspace)["cleanup"]["files_freed"] == 3


def _replace_by_multipart(client, bucket: str, key: str, data: bytes, part: int) -> None:
    """Write ``data`` at ``key`` again, in parts of ``part`` bytes as we did, with SHA-256 checksums:
    the same size and multipart ETag (MD5 of the parts' MD5s), another stored checksum."""
    uid = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")["UploadId"]
    parts = []
    for n, off in enumerate(range(0, len(data), part), 1):
        chunk = data[off:off + part]
        value = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
        r = client.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n, Body=chunk, ChecksumSHA256=value)
        parts.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": value})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts})


def test_an_object_replaced_with_the_same_size_and_etag_but_another_checksum_keeps_its_file(workspace, s3_client):
    data = write(workspace, "cam/long.mov", os.urandom(11 * MiB + 5))
    assert once(workspace, s3={"checksum_algorithm": "crc32c"}, upload=MULTIPART).returncode == 0
    before = rows(workspace)["cam/long.mov"]
    if workspace.server.kind != "seaweedfs":
        assert before.checksum is None  # rclone keeps no multipart checksum: nothing to compare
        return
    _replace_by_multipart(s3_client, workspace.bucket, "cam/long.mov", data, 5 * MiB)
    listed = s3_client.list_objects_v2(Bucket=workspace.bucket)["Contents"][0]
    assert (listed["Size"], listed["ETag"].strip('"')) == (before.size, before.etag)  # the listing cannot tell
    wait_due(workspace)
    r = once(workspace, s3={"checksum_algorithm": "crc32c"}, upload=MULTIPART, cleanup={"delete_after": "1s"})
    assert r.returncode == 0, r.stderr
    assert "Not deleting cam/long.mov: checksum differs" in r.stderr
    assert (workspace.inbox / "cam" / "long.mov").read_bytes() == data
    st = status(workspace)
    assert st["cleanup"]["requeued"] == 1 and st["cleanup"]["last_pass"]["held"] == {"checksum differs": 1}
    # uploaded again in the same run: S3 stores our checksum once more, and the row records it
    assert rows(workspace)["cam/long.mov"].checksum == f"CRC32C:FULL_OBJECT:{objects.checksum_of('CRC32C', data)}"
    assert get_bytes(s3_client, workspace.bucket, "cam/long.mov") == data

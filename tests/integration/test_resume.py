"""Multipart uploads survive a kill -9: the upload resumes with only the missing parts, never
with parts of another version of the file, and uploads nobody owns are aborted at start-up."""

from __future__ import annotations

import os

from helpers import get_bytes, list_keys, recorded_parts

MiB = 1024 * 1024

RESUMABLE = {"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB", "max_concurrency": 1,
             "upload_workers": 1}





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

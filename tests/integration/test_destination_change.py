"""The state database follows its destination (bucket, endpoint, prefix), and one host's start-up
sweep never aborts another host's multipart uploads.

End to end through ``s3-uploader once`` against the real S3-compatible server, as a user runs it;
the store's rebase and the sweep's key rules also at unit level.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import sqlite3
import time
from typing import Dict
from faultproxy import FaultProxy
from helpers import cli, get_bytes, list_keys, make_files, once, recorded_parts, wait_for
from s3_uploader.destination import META_DESTINATION
from s3_uploader.store import Store

MiB = 1024 * 1024

_seq = itertools.count(1)


def other_bucket(ws) -> str:
    name = f"{ws.bucket}-new{next(_seq)}"
    ws.server.create_bucket(name)
    return name


def wait_until_due(ws, seconds: float = 1.0) -> None:
    """Wait (on the clock, not a guess) until every upload recorded so far is ``seconds`` old."""
    with Store(ws.state / "state.db", readonly=True) as st:
        newest = max(r.uploaded_at for r in st.in_states(("uploaded",), limit=100000))
    wait_for(lambda: time.time() >= newest + seconds + 0.01, timeout=seconds + 5, what="uploads to become due")





def recorded(ws) -> Dict[str, str]:
    conn = sqlite3.connect(f"{(ws.state / 'state.db').absolute().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return json.loads(conn.execute("SELECT value FROM meta WHERE name = ?", (META_DESTINATION,)).fetchone()[0])
    finally:
        conn.close()


def test_after_a_bucket_change_once_uploads_every_file_still_present_to_the_new_bucket_and_says_so(
        workspace, s3_client):
    ws, old = workspace, workspace.bucket
    make_files(ws.inbox, [("cleaned.txt", b"cleaned up under the old bucket")])
    assert once(ws).returncode == 0
    wait_until_due(ws)
    r = once(ws, cleanup={"delete_after": "1s"})
    assert r.returncode == 0, r.stderr
    assert not (ws.inbox / "cleaned.txt").exists(), r.stderr
    files = make_files(ws.inbox, [("a.txt", b"a" * 100), ("cam/2026/b.bin", b"b" * 5000),
                                  ("removed.txt", b"the user removes it")])
    r = once(ws, cleanup={})
    assert r.returncode == 0, r.stderr
    assert set(list_keys(s3_client, old)) == {"cleaned.txt", *files}
    (ws.inbox / "removed.txt").unlink()  # by the user: its row stays 'uploaded', nothing to send

    new = other_bucket(ws)
    r = once(ws, s3={"bucket": new})
    assert r.returncode == 0, r.stderr
    ep = ws.server.endpoint
    assert (f"Destination changed from s3://{old}/ at {ep} to s3://{new}/ at {ep}: 2 file(s) still present "
            f"locally will be uploaded again") in r.stderr
    assert set(list_keys(s3_client, new)) == {"a.txt", "cam/2026/b.bin"}
    for rel in ("a.txt", "cam/2026/b.bin"):
        assert get_bytes(s3_client, new, rel) == files[rel]
    assert recorded(ws)["bucket"] == new

    r = once(ws, s3={"bucket": new})  # the same destination again: nothing to say, nothing sent again
    assert r.returncode == 0, r.stderr
    assert "Destination changed" not in r.stderr and "File ready" not in r.stderr


def test_after_a_prefix_change_cleanup_deletes_a_file_only_once_it_is_under_the_new_prefix(workspace, s3_client):
    ws = workspace
    files = make_files(ws.inbox, [("a.txt", b"a" * 100), ("d/b.bin", b"b" * 3000)])
    r = once(ws, s3={"prefix": "old"})
    assert r.returncode == 0, r.stderr
    assert set(list_keys(s3_client, ws.bucket)) == {"old/a.txt", "old/d/b.bin"}
    wait_until_due(ws)

    # the objects under old/ prove the bytes are in the bucket, but not where the files now belong
    new = {"prefix": "new/{hostname}"}
    r = once(ws, s3=new, cleanup={"delete_after": "1s"})
    assert r.returncode == 0, r.stderr
    ep = ws.server.endpoint
    assert (f"Destination changed from s3://{ws.bucket}/old/ at {ep} to s3://{ws.bucket}/new/{{hostname}}/ "
            f"at {ep}: 2 file(s) still present locally will be uploaded again") in r.stderr
    host = socket.gethostname().split(".")[0]
    for rel, data in files.items():
        assert get_bytes(s3_client, ws.bucket, f"new/{host}/{rel}") == data, f"{rel} is not under the new prefix"
    wait_until_due(ws)
    r = once(ws, s3=new, cleanup={"delete_after": "1s"})
    assert r.returncode == 0, r.stderr
    assert not any(ws.inbox.rglob("*.*")), "proven under the new prefix, then deleted"


def test_after_a_bucket_change_cleanup_deletes_a_file_only_once_it_is_proven_in_the_new_bucket(
        workspace, s3_client):
    ws = workspace
    files = make_files(ws.inbox, [("a.txt", b"a" * 100), ("b.txt", b"b" * 200)])
    assert once(ws).returncode == 0
    wait_until_due(ws)  # due by the old bucket's upload time
    new = other_bucket(ws)
    s3_client.put_object(Bucket=new, Key="b.txt", Body=b"another, older object")  # not this file's bytes
    r = once(ws, s3={"bucket": new}, cleanup={"delete_after": "1s"})
    assert r.returncode == 0, r.stderr
    assert "Destination changed" in r.stderr
    for rel, data in files.items():
        assert get_bytes(s3_client, new, rel) == data
    wait_until_due(ws)
    r = once(ws, s3={"bucket": new}, cleanup={"delete_after": "1s"})
    assert r.returncode == 0, r.stderr
    assert not any(ws.inbox.iterdir()), "proven in the new bucket, then deleted"


def test_an_endpoint_change_counts_as_a_new_destination_even_for_another_address_of_the_same_server(
        workspace, s3_server):
    ws = workspace
    make_files(ws.inbox, [("a.txt", b"a" * 100), ("b.txt", b"b" * 200)])
    assert once(ws).returncode == 0
    with FaultProxy(s3_server.port) as proxy:
        r = once(ws, s3={"endpoint_url": proxy.endpoint})
        assert r.returncode == 0, r.stderr
        assert (f"Destination changed from s3://{ws.bucket}/ at {s3_server.endpoint} to s3://{ws.bucket}/ at "
                f"{proxy.endpoint}: 2 file(s) still present locally will be uploaded again") in r.stderr
        assert proxy.count("PutObject") == 2
    assert recorded(ws)["endpoint"] == proxy.endpoint


def test_a_multipart_upload_interrupted_before_a_bucket_change_starts_afresh_in_the_new_bucket(
        workspace, s3_server, s3_client):
    ws = workspace
    data = os.urandom(40 * MiB)
    (ws.inbox / "big.bin").write_bytes(data)
    resumable = {"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB", "max_concurrency": 1,
                 "upload_workers": 1}
    with FaultProxy(s3_server.port) as proxy:
        ws.config(s3={"endpoint_url": proxy.endpoint}, upload=resumable)
        proxy.hold("UploadPart", part_number=4)
        d = ws.start()
        d.wait_until(lambda: proxy.held() == 1 and recorded_parts(ws.state / "state.db") == 3, timeout=60,
                     what="three parts recorded and the fourth in flight")
        d.kill()
        proxy.release(drop=True)
        [old_upload] = {e.upload_id for e in proxy.select("UploadPart")}

        new = other_bucket(ws)
        r = once(ws, s3={"endpoint_url": proxy.endpoint, "bucket": new}, upload=resumable)
        assert r.returncode == 0, r.stderr
        assert ("0 file(s) still present locally will be uploaded again, and 1 waiting file(s) go to the new "
                "destination") in r.stderr
        # the old bucket's upload id is never used (nor aborted) on the new bucket
        assert [e.op for e in proxy.select(upload_id=old_upload) if e.op != "UploadPart"] == []
        assert get_bytes(s3_client, new, "big.bin") == data
    assert [u["UploadId"] for u in s3_client.list_multipart_uploads(Bucket=ws.bucket).get("Uploads", [])] == [
        old_upload]  # left to the old bucket's lifecycle rule


def test_a_database_with_no_destination_recorded_records_it_and_sends_nothing_again(workspace):
    ws = workspace
    make_files(ws.inbox, [("a.txt", b"a")])
    assert once(ws).returncode == 0
    conn = sqlite3.connect(str(ws.state / "state.db"))
    with conn:
        conn.execute("DELETE FROM meta WHERE name = ?", (META_DESTINATION,))  # as written before it existed
    conn.close()
    r = once(ws)
    assert r.returncode == 0, r.stderr
    assert "Destination changed" not in r.stderr and "File ready" not in r.stderr
    assert recorded(ws) == {"endpoint": ws.server.endpoint, "bucket": ws.bucket, "prefix": ""}


def test_check_and_status_show_a_destination_change_without_recording_it(workspace):
    ws = workspace
    make_files(ws.inbox, [("a.txt", b"a")])
    assert once(ws).returncode == 0
    before = recorded(ws)
    new = other_bucket(ws)
    ws.config(s3={"bucket": new})
    r = cli("check", "-c", str(ws.config_path), env=ws.server.env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert (f"Destination changed since the last run (was s3://{ws.bucket}/ at {ws.server.endpoint}): the next "
            f"start uploads every file still present again") in r.stdout
    r = cli("status", "-c", str(ws.config_path))
    assert r.returncode == 0, r.stderr
    assert f"Destination: s3://{ws.bucket}/ at {ws.server.endpoint}" in r.stdout
    assert recorded(ws) == before


def test_a_hosts_start_up_sweep_aborts_its_own_stale_upload_and_leaves_another_hosts_upload_in_progress(
        workspace, s3_client):
    ws, b = workspace, workspace.bucket
    me = socket.gethostname().split(".")[0]
    other = me + "-b"  # shares our name's letters: its keys start with ours, its folder does not
    theirs_key = f"cams/{other}/2026/clip.mp4"
    theirs = s3_client.create_multipart_upload(Bucket=b, Key=theirs_key)["UploadId"]
    s3_client.upload_part(Bucket=b, Key=theirs_key, UploadId=theirs, PartNumber=1, Body=b"x" * (5 * MiB))
    stale_key = f"cams/{me}/2026/orphan.mp4"
    stale = s3_client.create_multipart_upload(Bucket=b, Key=stale_key)["UploadId"]
    make_files(ws.inbox, [("a.txt", b"a")])

    r = once(ws, s3={"prefix": "cams/{hostname}/{yyyy}"})
    assert r.returncode == 0, r.stderr
    assert f"Aborted stale multipart upload of {stale_key} (upload id {stale}" in r.stderr
    left = {(u["Key"], u["UploadId"]) for u in s3_client.list_multipart_uploads(Bucket=b).get("Uploads", [])}
    assert left == {(theirs_key, theirs)}
    parts = s3_client.list_parts(Bucket=b, Key=theirs_key, UploadId=theirs)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * MiB)]

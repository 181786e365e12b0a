"""The upload pipeline end to end, run as users run it: the CLI against a real S3-compatible server."""
from __future__ import annotations

import json
import os
import time

from helpers import cli, get_bytes, list_keys, make_files, wait_for


def test_once_uploads_nested_tree_skipping_hidden_and_reports_zero(workspace, s3_client):
    files = make_files(workspace.inbox, [("a.txt", b"alpha"), ("cam1/2026/x.mp4", b"x" * 1000),
                                         ("cam1/2026/empty.jpg", b""), (".hidden.txt", b"h"),
                                         (".cache/inside.txt", b"c")])
    workspace.config(s3={"prefix": "site1"})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    keys = list_keys(s3_client, workspace.bucket)
    assert keys == {"site1/a.txt": 5, "site1/cam1/2026/x.mp4": 1000, "site1/cam1/2026/empty.jpg": 0}
    assert get_bytes(s3_client, workspace.bucket, "site1/cam1/2026/x.mp4") == files["cam1/2026/x.mp4"]
    status = json.loads(cli("status", "--json", "-c", str(workspace.config_path)).stdout)
    assert status["counts"]["uploaded"] == 3
    assert status["waiting"] == 0


def test_daemon_uploads_a_dropped_file_and_stops_cleanly_on_sigterm(workspace, s3_client):
    workspace.config()
    d = workspace.start()
    d.wait_log("Watching")
    (workspace.inbox / "dropped.bin").write_bytes(os.urandom(5000))
    d.wait_log(r"Successfully uploaded dropped\.bin \(5000 bytes")
    assert list_keys(s3_client, workspace.bucket) == {"dropped.bin": 5000}
    assert d.stop() == 0


def test_a_file_still_being_appended_to_is_uploaded_only_once_it_stops_changing(workspace, s3_client):
    workspace.config(watch={"stable_seconds": "1.5s", "stable_checks": 2})
    d = workspace.start()
    d.wait_log("Watching")
    path = workspace.inbox / "recording.mp4"
    chunks = []
    # reopen for every append (no writer holds it open): only stability can hold it back. The writer
    # appends every 0.25 s for 3 s, twice stable_seconds, so a daemon that did not wait for the file to
    # settle would upload it while it grows, which the check after each append catches.
    started = time.monotonic()
    for i in range(12):
        chunk = os.urandom(1000)
        chunks.append(chunk)
        with open(path, "ab") as f:
            f.write(chunk)
        next_append = started + (i + 1) * 0.25
        wait_for(lambda: time.monotonic() >= next_append, 5, interval=0.01, what="the writer's next append")
        assert "recording.mp4" not in list_keys(s3_client, workspace.bucket), "uploaded while still growing"
    assert time.monotonic() - started >= 3.0
    d.wait_log(r"Successfully uploaded recording\.mp4 \(12000 bytes")
    assert get_bytes(s3_client, workspace.bucket, "recording.mp4") == b"".join(chunks)
    out = d.output()
    assert "Waiting for file to stabilize: recording.mp4" in out
    assert out.count("Uploading recording.mp4") == 1
    assert d.stop() == 0


def test_a_file_held_open_by_its_writer_waits_for_the_writer_to_close(workspace, s3_client):
    workspace.config(watch={"stable_seconds": "0.3s", "stable_checks": 2})
    d = workspace.start()
    d.wait_log("Watching")
    path = workspace.inbox / "held.dat"
    with open(path, "wb") as f:
        f.write(b"partial")
        f.flush()
        d.wait_log("Waiting for writer to close file: held.dat")
        assert "held.dat" not in list_keys(s3_client, workspace.bucket)
        f.write(b" and the rest")
    d.wait_log(r"Successfully uploaded held\.dat")
    assert get_bytes(s3_client, workspace.bucket, "held.dat") == b"partial and the rest"
    assert d.stop() == 0


def test_a_restart_sends_nothing_twice_and_a_modified_file_is_sent_again(workspace, s3_client):
    make_files(workspace.inbox, [(f"d{i % 3}/f{i}.txt", f"v1-{i}".encode()) for i in range(30)])
    workspace.config()
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0 and r.stderr.count("Successfully uploaded") == 30
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0 and "Uploading" not in r.stderr, r.stderr
    d = workspace.start()
    d.wait_log("Watching")
    (workspace.inbox / "d1" / "f1.txt").write_bytes(b"version two")
    d.wait_log(r"Successfully uploaded d1/f1\.txt \(11 bytes")
    assert get_bytes(s3_client, workspace.bucket, "d1/f1.txt") == b"version two"
    assert d.stop() == 0
    # the restarted daemon must have compared the whole tree with its database before it is stopped
    # ("Watching" comes before its scanner starts): its first full scan finds 30 files, none to send
    workspace.config(daemon={"log_level": "DEBUG"})
    d2 = workspace.start()
    d2.wait_log(r"Scan: 30 files, 0 to upload")
    assert d2.stop() == 0
    assert "Uploading" not in d2.output()


def test_a_multipart_upload_arrives_byte_identical(workspace, s3_client):
    data = os.urandom(17 * 1024 * 1024 + 3)
    (workspace.inbox / "big.bvr").write_bytes(data)
    workspace.config(upload={"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB"})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    assert get_bytes(s3_client, workspace.bucket, "big.bvr") == data
    head = s3_client.head_object(Bucket=workspace.bucket, Key="big.bvr")
    assert head["ETag"].strip('"').endswith("-4")


def test_a_fifo_and_a_symlink_out_of_the_tree_are_harmless(workspace, s3_client, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not upload")
    os.mkfifo(workspace.inbox / "pipe")
    os.symlink(secret, workspace.inbox / "link.txt")
    os.symlink(tmp_path, workspace.inbox / "linkdir")
    (workspace.inbox / "good.txt").write_text("good")
    workspace.config(watch={"follow_symlinks": "true"})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert list_keys(s3_client, workspace.bucket) == {"good.txt": 4}
    assert "Skipping a FIFO (only regular files are uploaded): pipe" in r.stderr
    assert "Symlink leads outside the watched directory, not followed: link.txt" in r.stderr


def test_include_and_exclude_pick_the_camera_files(workspace, s3_client):
    make_files(workspace.inbox, [("cam1/a.mp4", b"1"), ("cam1/a.dat", b"2"), ("cam1/notes.txt", b"3"),
                                 ("tmp/b.mp4", b"4"), ("c.jpg", b"5")])
    workspace.config(watch={"include": "*.dat, *.bvr, *.avi, *.mov, *.jpg, *.mp4", "exclude": "tmp/*"})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    assert set(list_keys(s3_client, workspace.bucket)) == {"cam1/a.mp4", "cam1/a.dat", "c.jpg"}


def test_once_exits_1_when_a_file_cannot_be_uploaded_and_still_uploads_the_rest(workspace, s3_client):
    long_dir = "/".join(["d" * 200] * 6)  # > 1,024 bytes of key
    make_files(workspace.inbox, [(f"{long_dir}/x.txt", b"x"), ("ok.txt", b"ok")])
    workspace.config()
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 1
    assert "over S3's limit of 1024" in r.stderr
    assert list_keys(s3_client, workspace.bucket) == {"ok.txt": 2}
    status = json.loads(cli("status", "--json", "-c", str(workspace.config_path)).stdout)
    assert status["counts"]["parked"] == 1 and status["counts"]["uploaded"] == 1
    assert status["parked"][0]["kind"] == "invalid"
    text = cli("status", "-c", str(workspace.config_path)).stdout
    assert "parked" in text and "Oldest file not yet in S3" in text


def test_a_file_name_with_a_newline_cannot_forge_a_log_line(workspace, s3_client):
    (workspace.inbox / "evil\nSuccessfully uploaded forged.txt").write_bytes(b"x")
    workspace.config()
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    # the key escapes the newline (a control character: see README "File names")
    assert "evil%0ASuccessfully uploaded forged.txt" in list_keys(s3_client, workspace.bucket)
    messages = [line.split(None, 3)[3] for line in r.stderr.splitlines() if len(line.split(None, 3)) == 4]
    assert sum(m.startswith("Successfully uploaded") for m in messages) == 1
    assert "Successfully uploaded evil%0ASuccessfully uploaded forged.txt (1 bytes" in r.stderr
    assert not any(line.startswith("Successfully") for line in r.stderr.splitlines())

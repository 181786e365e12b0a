"""One host's start-up sweep never aborts another host's multipart uploads.

End to end through ``s3-uploader once`` against the real S3-compatible server, as a user runs it;
the sweep's key rules also at unit level.
"""
from __future__ import annotations

import socket
from pathlib import Path

from helpers import cli, make_files, write_config

from s3_uploader.config import load_config
from s3_uploader.daemon import Daemon
from s3_uploader.destination import OwnKeys
from s3_uploader.keys import KeyMaker
from s3_uploader.remote import MemoryRemote, PutOptions
from s3_uploader.store import Store

MiB = 1024 * 1024


def once(ws, **sections):
    ws.config(**sections)
    return cli("once", "-c", str(ws.config_path), env=ws.server.env())


# -- item 7: one host never aborts another host's uploads ------------------------------------------------

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


def daemon_on(tmp_path: Path, remote, prefix: str, hostname: str) -> Daemon:
    (tmp_path / "in").mkdir(exist_ok=True)
    cfg = write_config(tmp_path / "c.ini", {"watch": {"directory_to_watch": tmp_path / "in"},
                                             "s3": {"bucket": "b", "prefix": prefix},
                                             "daemon": {"db_path": tmp_path / "s.db"}})
    d = Daemon(load_config(cfg), remote=remote, store=Store(tmp_path / "s.db"))
    d.keymaker = KeyMaker(prefix, hostname=hostname)
    return d


def test_the_sweep_touches_only_keys_of_our_templates_shape_with_our_hostname(tmp_path):
    remote = MemoryRemote()
    ours = remote.create_multipart("cams/a-2026/x.mp4", PutOptions())
    theirs = remote.create_multipart("cams/a-b-2026/y.mp4", PutOptions())  # host 'a-b', listed under 'cams/a-'
    d = daemon_on(tmp_path, remote, "cams/{hostname}-{yyyy}", "a")
    assert d.abort_stale_multipart() == 1
    assert set(remote.uploads) == {theirs} and ours not in remote.uploads
    d.store.close()


def test_own_keys_listing_prefix_fills_in_the_hostname_and_stops_at_the_first_date():
    assert OwnKeys(KeyMaker("cams/{hostname}/{yyyy}", hostname="h")).listing_prefix == "cams/h/"
    assert OwnKeys(KeyMaker("{hostname}", hostname="h")).listing_prefix == "h/"
    assert OwnKeys(KeyMaker("site", hostname="h")).listing_prefix == "site/"
    assert OwnKeys(KeyMaker("", hostname="h")).listing_prefix == ""
    assert OwnKeys(KeyMaker("{yyyy}/{hostname}", hostname="h")).listing_prefix == ""
    own = OwnKeys(KeyMaker("cams/{hostname}/{yyyy}-{mm}-{dd}", hostname="h"))
    assert own.could_own("cams/h/2026-01-31/a/b.mp4")
    assert not own.could_own("cams/h/notadate/a.mp4") and not own.could_own("cams/h2/2026-01-31/a.mp4")
    assert not OwnKeys(KeyMaker("", hostname="h")).could_own("anything")

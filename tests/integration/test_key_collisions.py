"""No two files ever share an S3 key: the mapping, the database's constraint, the daemon's handling
of a collision, a reused path under a dated prefix, and a file parked again without stopping anything."""

from __future__ import annotations

import os
import signal
import time
import unicodedata
from pathlib import Path

import pytest
from helpers import cannot_run, cli, get_bytes, list_keys, make_files, once, wait_for
from s3_uploader.keys import escape_name, unescape_name
from s3_uploader.store import Store


def rows(db: Path):
    with Store(db, readonly=True) as st:
        return {r.rel: r for r in st.iter_all()}


TRICKY = [b"a%FF.dat", b"a\xff.dat",                      # the pair that shared a key
          b"x\\y.txt", b"x/y.txt", b"d\\..\\up.txt",        # SeaweedFS reads '\' as '/'
          b"%5C.txt", b"\\.txt", b"%41.txt", b"A.txt", b"%%25.txt", b"100%.txt",
          b"tab\tname.txt", b"nl\nname.txt", b"del\x7f.txt", b" lead.txt", b"trail .txt",
          unicodedata.normalize("NFC", "caf\u00e9.txt").encode(),
          unicodedata.normalize("NFD", "caf\u00e9.txt").encode(),
          b"caf\xe9 100%.txt", b"sub dir/%zz %", b"sub dir/%ZZ %"]


@pytest.mark.parametrize("transport", ["obstore", "boto3"])  # obstore's path rules are its own
def test_tricky_names_become_distinct_objects_whose_keys_decode_to_their_names_and_hold_their_own_bytes(
        workspace, s3_client, transport):
    if transport == "obstore":
        try:
            import obstore  # noqa: F401
        except ImportError:
            cannot_run("obstore is not installed (Python >= 3.11: pip install obstore)")
    root = os.fsencode(workspace.inbox)
    files = {}
    for i, raw in enumerate(TRICKY):
        path = os.path.join(root, raw)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = b"file %d: " % i + raw
        with open(path, "wb") as f:
            f.write(data)
        files[os.fsdecode(raw)] = data
    workspace.config(s3={"prefix": "in", "transport": transport})
    r = once(workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    keys = list_keys(s3_client, workspace.bucket)
    assert len(keys) == len(files) == len(TRICKY)  # one object per file: none merged into another
    for rel, data in files.items():
        key = "in/" + escape_name(rel)
        assert key in keys, (rel, key, sorted(keys))
        assert unescape_name(key[len("in/"):]) == rel
        assert get_bytes(s3_client, workspace.bucket, key) == data, rel
    assert "in/a%25FF.dat" in keys and "in/a%FF.dat" in keys and "in/x%5Cy.txt" in keys and "in/100%.txt" in keys


def test_a_file_whose_key_another_file_has_is_parked_with_one_line_naming_both_and_goes_once_renamed(
        workspace, s3_client):
    make_files(workspace.inbox, [("x.txt", b"the first file's only copy")])
    workspace.config(s3={"prefix": "a"})
    assert once(workspace).returncode == 0
    uploaded = time.time()
    wait_for(lambda: time.time() >= uploaded + 1.1, timeout=5, what="the upload to be 1 s old")
    workspace.config(s3={"prefix": "a"}, cleanup={"delete_after": "1s"})
    assert once(workspace).returncode == 0 and not (workspace.inbox / "x.txt").exists()
    # the prefix is changed (a new destination: files still present go again, removed ones keep their
    # rows and keys): the new file a/x.txt would go to a/x.txt, where x.txt's only copy is
    make_files(workspace.inbox, [("a/x.txt", b"another file"), ("b.txt", b"b")])
    workspace.config()
    r = once(workspace)
    assert r.returncode == 1
    line = ("a/x.txt would go to S3 key a/x.txt, which x.txt already has (its local copy is gone: that object "
            "is its only copy); parked (rename one of them)")
    assert r.stderr.count(line) == 1, r.stderr[-3000:]
    assert get_bytes(s3_client, workspace.bucket, "a/x.txt") == b"the first file's only copy"
    assert get_bytes(s3_client, workspace.bucket, "b.txt") == b"b"  # the rest goes on
    st = rows(workspace.state / "state.db")
    assert (st["a/x.txt"].key, st["a/x.txt"].state, st["a/x.txt"].error_kind) == (None, "parked", "collision")
    # tried again like any parked file ('once' retries parked files): still taken, said again, no crash
    r = once(workspace)
    assert r.returncode == 1 and r.stderr.count(line) == 1, r.stderr[-3000:]
    (workspace.inbox / "a" / "x.txt").rename(workspace.inbox / "a" / "x2.txt")
    r = once(workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    assert get_bytes(s3_client, workspace.bucket, "a/x2.txt") == b"another file"
    assert get_bytes(s3_client, workspace.bucket, "a/x.txt") == b"the first file's only copy"


def test_a_reused_path_under_a_dated_prefix_gets_its_own_days_key(workspace, s3_client):
    day1 = time.mktime((2020, 9, 13, 12, 0, 0, 0, 0, -1))
    day2 = time.mktime((2020, 9, 17, 12, 0, 0, 0, 0, -1))
    log = workspace.inbox / "app.log"
    log.write_bytes(b"monday's log")
    os.utime(log, (day1, day1))
    workspace.config(s3={"prefix": "{yyyy}/{mm}/{dd}"})
    assert once(workspace).returncode == 0
    uploaded = time.time()
    wait_for(lambda: time.time() >= uploaded + 1.1, timeout=5, what="the upload to be 1 s old")
    workspace.config(s3={"prefix": "{yyyy}/{mm}/{dd}"}, cleanup={"delete_after": "1s"})
    r = once(workspace)
    assert r.returncode == 0 and not log.exists(), r.stderr[-3000:]
    log.write_bytes(b"friday's log")
    os.utime(log, (day2, day2))
    r = once(workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    assert get_bytes(s3_client, workspace.bucket, "2020/09/13/app.log") == b"monday's log"
    assert get_bytes(s3_client, workspace.bucket, "2020/09/17/app.log") == b"friday's log"


def test_a_long_keyed_file_rechecked_retried_and_reloaded_never_stops_the_daemon(workspace, s3_client):
    deep = "/".join(["d" * 250] * 4) + "/" + "f" * 100 + ".txt"  # a key of 1,108 bytes
    p = workspace.inbox / deep
    p.parent.mkdir(parents=True)
    p.write_bytes(b"too deep")
    make_files(workspace.inbox, [("first.txt", b"1")])
    workspace.config(upload={"parked_retry_interval": "1s"})
    d = workspace.start()
    parked = r"Cannot upload d{250}/.*: S3 key is 1108 bytes long, over S3's limit of 1024; parked"
    d.wait_log(parked)
    d.wait_until(lambda: "first.txt" in list_keys(s3_client, workspace.bucket), what="first.txt uploaded")

    def still_going(name: str) -> None:
        make_files(workspace.inbox, [(name, name.encode())])
        d.wait_until(lambda: name in list_keys(s3_client, workspace.bucket), what=f"{name} uploaded")
        assert d.proc.poll() is None, d.output()[-3000:]

    # rechecked by a rescan: the file changed, so it is checked again
    with open(p, "ab") as f:
        f.write(b" and deeper")
    d.wait_log(parked, count=2)
    still_going("after-rescan.txt")
    # retried: 's3-uploader retry' makes it due now (parked -> parked raised and the daemon exited 1)
    r = cli("retry", "-c", str(workspace.config_path))
    assert r.returncode == 0, r.stderr
    d.wait_log(parked, count=3)
    still_going("after-retry.txt")
    # reloaded: SIGHUP with a watch setting changed starts a rescan, and a retry comes due again
    workspace.config(watch={"scan_interval": "2s"}, upload={"parked_retry_interval": "1s"})
    cli("retry", "-c", str(workspace.config_path))
    d.signal(signal.SIGHUP)
    d.wait_log("Configuration reloaded")
    d.wait_log(parked, count=4)
    still_going("after-reload.txt")
    assert "Thread scheduler failed" not in d.output() and "IllegalTransition" not in d.output()
    assert d.stop() == 0


def test_a_file_whose_key_an_earlier_versions_row_holds_is_parked_by_the_running_daemon_and_the_rest_goes(
        workspace, s3_client):
    # a%FF.dat as the earlier mapping left it: uploaded to the key a%FF.dat (now the key of the bytes a\xff.dat)
    (workspace.inbox / "a%FF.dat").write_bytes(b"utf-8 name")
    s3_client.put_object(Bucket=workspace.bucket, Key="a%FF.dat", Body=b"utf-8 name")
    st_ = os.stat(workspace.inbox / "a%FF.dat")
    with Store(workspace.state / "state.db") as st:
        st.discover("a%FF.dat", "a%FF.dat", st_.st_size, st_.st_mtime_ns, st_.st_ino)
        st.start_upload("a%FF.dat", st_.st_size, st_.st_mtime_ns, st_.st_ino)
        st.finish_upload("a%FF.dat", st_.st_size, st_.st_mtime_ns, st_.st_ino, None, None)
    workspace.config(upload={"parked_retry_interval": "1h"})
    d = workspace.start()
    d.wait_log("Watching")
    with open(os.path.join(os.fsencode(workspace.inbox), b"a\xff.dat"), "wb") as f:  # seen by an event
        f.write(b"latin-1 name")
    make_files(workspace.inbox, [("other.txt", b"other")])
    line = r"a\\xff\.dat would go to S3 key a%FF\.dat, which a%FF\.dat already has; parked \(rename one of them\)"
    d.wait_log(line)
    d.wait_until(lambda: "other.txt" in list_keys(s3_client, workspace.bucket), what="other.txt uploaded")
    r = cli("retry", "-c", str(workspace.config_path))  # tried again: still taken, said again, nothing stops
    assert r.returncode == 0, r.stderr
    d.wait_log(line, count=2)
    make_files(workspace.inbox, [("later.txt", b"later")])
    d.wait_until(lambda: "later.txt" in list_keys(s3_client, workspace.bucket), what="later.txt uploaded")
    assert get_bytes(s3_client, workspace.bucket, "a%FF.dat") == b"utf-8 name"
    assert d.stop() == 0
    got = rows(workspace.state / "state.db")
    assert (got["a\udcff.dat"].key, got["a\udcff.dat"].state, got["a\udcff.dat"].error_kind) == \
        (None, "parked", "collision")


@pytest.mark.parametrize("how", ["replaced by another program", "rewritten in place"])
def test_a_new_version_of_an_uploaded_file_from_another_day_never_replaces_the_earlier_days_object(
        workspace, s3_client, how):
    """Found by review: a recorder deleting its own old clip (our cleanup off) and writing a new one
    at the same name, days later, sent it to the old day's key, over that clip's only copy. A file
    replaced and a file rewritten in place cannot be told apart (inode numbers are reused), so
    every new version of an uploaded file takes its own day's key."""
    day1 = time.mktime((2020, 9, 13, 12, 0, 0, 0, 0, -1))
    day5 = time.mktime((2020, 9, 17, 12, 0, 0, 0, 0, -1))
    clip = workspace.inbox / "cam1" / "clip001.mp4"
    clip.parent.mkdir()
    clip.write_bytes(b"monday's clip")
    os.utime(clip, (day1, day1))
    workspace.config(s3={"prefix": "{yyyy}/{mm}/{dd}"})
    assert once(workspace).returncode == 0
    if how == "replaced by another program":
        clip.unlink()  # the recorder's own ring buffer; the next file may reuse the inode number
        clip.write_bytes(b"friday's clip, longer")
    else:
        with open(clip, "r+b") as f:
            f.write(b"friday's clip, longer")
    os.utime(clip, (day5, day5))
    r = once(workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    assert get_bytes(s3_client, workspace.bucket, "2020/09/13/cam1/clip001.mp4") == b"monday's clip"
    assert get_bytes(s3_client, workspace.bucket, "2020/09/17/cam1/clip001.mp4") == b"friday's clip, longer"
    # and on the same day the same name is the same key (the prefix says so): replaced
    clip.write_bytes(b"friday's second clip")
    os.utime(clip, (day5 + 60, day5 + 60))
    assert once(workspace).returncode == 0
    assert get_bytes(s3_client, workspace.bucket, "2020/09/17/cam1/clip001.mp4") == b"friday's second clip"


def test_a_file_whose_mtime_no_calendar_can_hold_is_uploaded_under_the_nearest_date_and_stops_nothing(
        workspace, s3_client, tmpfs):
    """Found by review: under a dated prefix, ``touch -d @99999999999999999`` on a filesystem that
    stores it (tmpfs, btrfs; ext4 clamps) made time.localtime raise in the scanner: the thread died,
    and the daemon with it, at every restart."""
    inbox = tmpfs / "inbox"
    inbox.mkdir()
    make_files(inbox, [("bad.txt", b"from the far future"), ("good.txt", b"today")])
    os.utime(inbox / "bad.txt", (99999999999999999, 99999999999999999))
    try:
        time.localtime(os.stat(inbox / "bad.txt").st_mtime)
        cannot_run("this tmpfs clamps mtimes, so the case cannot be made here")
    except (OverflowError, OSError, ValueError):
        pass
    workspace.config(watch={"directory_to_watch": inbox}, s3={"prefix": "{yyyy}/{mm}/{dd}"})
    r = once(workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    keys = list_keys(s3_client, workspace.bucket)
    # its mtime is held within 64-bit nanoseconds (the year 2262), and dated from there
    day = time.strftime("%Y/%m/%d", time.localtime((2 ** 63 - 1) / 1e9))
    assert keys[f"{day}/bad.txt"] == len(b"from the far future")
    assert len(keys) == 2
    assert once(workspace).returncode == 0  # and it is not seen as changed at every scan
    assert "bad.txt" not in once(workspace).stderr

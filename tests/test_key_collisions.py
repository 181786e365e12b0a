"""No two files ever share an S3 key: the mapping, the database's constraint, the daemon's handling
of a collision, a reused path under a dated prefix, and a file parked again without stopping anything."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import unicodedata
from pathlib import Path

import pytest
from helpers import PY, _env, cannot_run, cli, get_bytes, list_keys, make_files, wait_for

from s3_uploader.config import ConfigError, parse_config
from s3_uploader.keys import escape_name, unescape_name
from s3_uploader.store import SCHEMA_VERSION, IllegalTransition, Store


def once(workspace) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "s3_uploader", "once", "-c", str(workspace.config_path)],
                          env=_env(workspace.server.env()), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def rows(db: Path):
    with Store(db, readonly=True) as st:
        return {r.rel: r for r in st.iter_all()}


# -- the store: the database refuses a shared key ----------------------------------------------------------

def test_the_database_refuses_a_second_row_with_a_key_another_row_holds(tmp_path):
    with Store(tmp_path / "s.db") as st:
        st.discover("a.txt", "k/a.txt", 1, 1, 1)
        st.discover("b.txt", "k/b.txt", 1, 1, 2)
        for sql in ("UPDATE files SET key = 'k/a.txt' WHERE path = CAST('b.txt' AS BLOB)",
                    "INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, discovered_at, updated_at) "
                    "VALUES(CAST('c.txt' AS BLOB), x'', 'k/a.txt', 'uploaded', 1, 1, 3, 0, 0)"):
            with pytest.raises(IllegalTransition, match="UNIQUE constraint failed: files.key"):
                st._write(sql)
        # a row without a key can never be sent (and so never be cleaned up)
        with pytest.raises(IllegalTransition, match="CHECK constraint failed"):
            st._write("UPDATE files SET key = NULL WHERE path = CAST('b.txt' AS BLOB)")
        assert {r.rel: r.key for r in st.iter_all()} == {"a.txt": "k/a.txt", "b.txt": "k/b.txt"}


def test_a_new_file_whose_key_another_row_holds_is_parked_never_skipped(tmp_path):
    with Store(tmp_path / "s.db", clock=lambda: 1000.0) as st:
        assert st.discover_many([("a%FF.dat", "a%FF.dat", 3, 1, 1), ("x/y.txt", "x/y.txt", 3, 1, 2)]) == []
        # INSERT OR IGNORE used to drop these two without a word: lost files
        collided = st.discover_many([("new.txt", "new.txt", 1, 1, 3), ("b\udcff.dat", "a%FF.dat", 4, 1, 4),
                                     ("twin1", "same", 1, 1, 5), ("twin2", "same", 1, 1, 6),
                                     ("x/y.txt", "elsewhere", 9, 9, 9)], retry_at=4600.0)
        assert [(r.rel, r.key, r.state, r.error_kind, r.next_attempt_at) for r in collided] == [
            ("b\udcff.dat", None, "parked", "collision", 4600.0), ("twin2", None, "parked", "collision", 4600.0)]
        assert collided[0].last_error == ("b\\xff.dat would go to S3 key a%FF.dat, which a%FF.dat already has; "
                                          "parked (rename one of them)")
        got = {r.rel: (r.key, r.state) for r in st.iter_all()}
        assert got == {"a%FF.dat": ("a%FF.dat", "pending"), "x/y.txt": ("x/y.txt", "pending"),
                       "new.txt": ("new.txt", "pending"), "b\udcff.dat": (None, "parked"),
                       "twin1": ("same", "pending"), "twin2": (None, "parked")}
        # discover (one file) does the same, and parking again (a retry that finds it taken) is no error
        rec = st.discover("c.txt", "new.txt", 1, 1, 7, retry_at=5000.0)
        assert (rec.key, rec.state, rec.next_attempt_at) == (None, "parked", 5000.0)
        rec = st.discover("c.txt", "new.txt", 1, 1, 7, retry_at=6000.0)
        assert (rec.key, rec.state, rec.next_attempt_at) == (None, "parked", 6000.0)
        with pytest.raises(IllegalTransition, match="CHECK"):
            st.start_upload("c.txt", 1, 1, 7)  # a keyless row never starts an upload
        # once the other file is gone, the parked one takes its own key
        st.forget("new.txt")
        rec = st.discover("c.txt", "new.txt", 1, 1, 7)
        assert (rec.key, rec.state, rec.error_kind) == ("new.txt", "pending", None)


def test_a_new_file_at_a_deleted_or_archived_path_and_a_changed_uploaded_file_take_their_own_key(tmp_path):
    with Store(tmp_path / "s.db") as st:
        for rel, key in (("app.log", "2020/09/13/app.log"), ("b.log", "2020/09/13/b.log"),
                         ("c.log", "2020/09/13/c.log")):
            st.discover(rel, key, 1, 1, 1)
            st.start_upload(rel, 1, 1, 1)
            st.finish_upload(rel, 1, 1, 1, "m", "e")
        st.mark_removed("app.log", "deleted")
        st.mark_removed("b.log", "archived")
        assert st.discover("app.log", "2020/09/17/app.log", 2, 2, 2).key == "2020/09/17/app.log"
        assert st.discover("b.log", "2020/09/17/b.log", 2, 2, 2).key == "2020/09/17/b.log"
        # a new version of an uploaded file (changed in place or replaced: inode numbers are reused, so
        # they cannot be told apart) takes its own day's key; the earlier day's object is never replaced
        assert st.discover("c.log", "2020/09/17/c.log", 2, 2, 1).key == "2020/09/17/c.log"
        # a waiting row keeps its key (nothing of it is in S3; an open multipart upload is that key's)
        st.discover("w.log", "2020/09/13/w.log", 1, 1, 9)
        assert st.discover("w.log", "2020/09/17/w.log", 2, 2, 9).key == "2020/09/13/w.log"
        # the old day's object of app.log belongs to nobody now, and stays in S3 untouched
        assert not st.has_key("2020/09/13/app.log")


def test_a_parked_or_failed_row_parked_again_does_not_raise(tmp_path):
    with Store(tmp_path / "s.db") as st:
        st.discover("long.txt", "k" * 2000, 1, 1, 1)
        st.fail_upload("long.txt", "invalid", "too long", None, park=True)
        st.fail_upload("long.txt", "invalid", "too long", None, park=True)  # IllegalTransition before
        st.discover("f.txt", "f.txt", 1, 1, 2)
        st.fail_upload("f.txt", "network", "reset", 5.0, park=False)
        st.fail_upload("f.txt", "invalid", "bad", None, park=True)
        assert {r.rel: r.state for r in st.iter_all()} == {"long.txt": "parked", "f.txt": "parked"}
        st.discover("g.txt", "g.txt", 1, 1, 3)
        st.start_upload("g.txt", 1, 1, 3)
        st.finish_upload("g.txt", 1, 1, 3, "m", "e")
        with pytest.raises(IllegalTransition):
            st.fail_upload("g.txt", "invalid", "bad", None, park=True)  # an uploaded row is not parked


_V1_FILES = """
CREATE TABLE files (
    path BLOB PRIMARY KEY, dir BLOB NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, md5 TEXT, etag TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL, last_error TEXT, error_kind TEXT, discovered_at REAL NOT NULL, updated_at REAL NOT NULL,
    uploaded_at REAL, upload_id TEXT, part_size INTEGER) WITHOUT ROWID;
CREATE INDEX files_dir ON files(dir);
CREATE TABLE parts (path BLOB NOT NULL, upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, md5 TEXT NOT NULL, PRIMARY KEY (path, upload_id, part_number)) WITHOUT ROWID;
CREATE TABLE errors (id INTEGER PRIMARY KEY, at REAL NOT NULL, path BLOB, kind TEXT, message TEXT NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES('schema_version', '1');
"""


def _v1_row(conn, rel, key, state, discovered, uploaded=None, upload_id=None):
    conn.execute("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, discovered_at, updated_at, "
                 "uploaded_at, upload_id) VALUES(?, x'', ?, ?, 1, 1, 1, ?, ?, ?, ?)",
                 (os.fsencode(rel), key, state, discovered, discovered, uploaded, upload_id))


def test_a_version_1_database_whose_rows_share_keys_is_migrated_without_losing_a_row(tmp_path, caplog):
    db = tmp_path / "v1.db"
    conn = sqlite3.connect(str(db))
    conn.executescript(_V1_FILES)
    latin = os.fsdecode(b"a\xff.dat")
    # the bug as it happened: a%FF.dat uploaded and deleted, then the other file uploaded over its object
    _v1_row(conn, "a%FF.dat", "a%FF.dat", "deleted", 1.0, uploaded=10.0)
    _v1_row(conn, latin, "a%FF.dat", "uploaded", 2.0, uploaded=20.0)
    # before it happened: both still waiting, one with a multipart upload open
    _v1_row(conn, "x\\y.txt", "x\\y.txt", "pending", 3.0)
    _v1_row(conn, "z\\y.txt", "x\\y.txt", "pending", 4.0, upload_id="up-1")
    conn.execute("INSERT INTO parts VALUES(?, 'up-1', 1, 5, 'e', 'm')", (b"z\\y.txt",))
    _v1_row(conn, "plain.txt", "plain.txt", "uploaded", 5.0, uploaded=30.0)
    conn.commit()
    conn.close()

    with Store(db, clock=lambda: 99.0) as st:
        assert st.meta("schema_version") == str(SCHEMA_VERSION) == "3"  # through 2, on to 3
        got = {r.rel: r for r in st.iter_all()}
        assert len(got) == 5  # every row kept
        assert st.counts() == {"pending": 1, "uploading": 0, "uploaded": 2, "failed": 0, "parked": 1,
                               "deleted": 1, "archived": 0}
        # S3 holds the bytes of the one uploaded last: it keeps the key; the deleted one keeps none
        assert (got[latin].key, got[latin].state) == ("a%FF.dat", "uploaded")
        assert (got["a%FF.dat"].key, got["a%FF.dat"].state) == (None, "deleted")
        # of two waiting files, the earlier one keeps the key; the later is parked, due now, with the reason
        assert (got["x\\y.txt"].key, got["x\\y.txt"].state) == ("x\\y.txt", "pending")
        z = got["z\\y.txt"]
        assert (z.key, z.state, z.error_kind, z.next_attempt_at, z.upload_id) == (None, "parked", "collision", 99.0,
                                                                                   None)
        assert z.last_error == ("z\\y.txt would go to S3 key x\\y.txt, which x\\y.txt already has; "
                                "parked (rename one of them)")
        assert st.parts("z\\y.txt", "up-1") == {}
        assert got["plain.txt"].key == "plain.txt"
        # the constraint is in force from now on
        with pytest.raises(IllegalTransition, match="UNIQUE"):
            st._write("UPDATE files SET key = 'plain.txt' WHERE path = CAST('x\\y.txt' AS BLOB)")
    assert "z\\y.txt would go to S3 key x\\y.txt" in caplog.text
    with Store(db) as st:  # opening it again changes nothing
        assert {r.rel: r.key for r in st.iter_all()} == {r: g.key for r, g in got.items()}


# -- config -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix, found", [("a//b", "''"), ("./x", "'.'"), ("x/..", "'..'"),
                                           ("{yyyy}//{mm}", "''"), ("a/./{dd}", "'.'")])
def test_a_prefix_with_an_empty_dot_or_dotdot_folder_is_a_config_error_reported_with_the_others(prefix, found):
    with pytest.raises(ConfigError) as err:
        parse_config("[watch]\ndirectory_to_watch = /tmp\nstable_seconds = soon\n"
                     f"[s3]\nbucket = b\nprefix = {prefix}\n")
    assert any(e.startswith("[watch] stable_seconds") for e in err.value.errors)
    assert (f"[s3] prefix = {prefix!r}: expected folder names separated by single '/', none of them empty, "
            f"'.' or '..' (found {found})") in err.value.errors


def test_a_prefix_with_a_backslash_is_a_config_error_and_leading_or_trailing_slashes_are_fine(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config("[watch]\ndirectory_to_watch = /tmp\n[s3]\nbucket = b\nprefix = site\\cam\n")
    assert err.value.errors == ["[s3] prefix = 'site\\\\cam': expected no '\\' (use '/' between folders) and no "
                                "control characters"]
    for ok in ("/site1/x/", "{hostname}/{yyyy}/{mm}/{dd}", "..x/y..", ""):
        parse_config(f"[watch]\ndirectory_to_watch = /tmp\n[s3]\nbucket = b\nprefix = {ok}\n")
    cfg = tmp_path / "c.ini"
    cfg.write_text("[watch]\ndirectory_to_watch = /tmp\n[s3]\nbucket = b\nprefix = a//b\n")
    r = cli("check", "-c", str(cfg))
    assert r.returncode == 2 and "[s3] prefix = 'a//b'" in r.stderr


# -- on the real server -------------------------------------------------------------------------------------

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


def test_a_scan_that_finds_a_file_changed_while_a_worker_uploads_it_leaves_the_row_to_the_worker(tmp_path):
    """Found by review: the scanner saw a changed signature, was pre-empted, a worker moved the row to
    uploading, then the scan's discover moved it back to pending; the worker's finish raised
    IllegalTransition and the worker thread's failure stopped the daemon."""
    with Store(tmp_path / "s.db") as st:
        st.discover("a.txt", "a.txt", 1, 1, 1)
        st.start_upload("a.txt", 1, 1, 1)  # the worker has it
        rec = st.discover("a.txt", "a.txt", 2, 2, 1)  # the scan's late look at the changed file
        assert (rec.state, rec.signature) == ("uploading", (1, 1, 1))
        st.requeue("a.txt", 2, 2, 1)  # the worker's re-check found the change: pending, new signature
        assert (st.get("a.txt").state, st.get("a.txt").signature) == ("pending", (2, 2, 1))

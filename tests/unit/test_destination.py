"""The state database follows its destination (bucket, endpoint, prefix): the store's rebase and the
start-up sweep's key rules, on a MemoryRemote.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_config

from s3_uploader.config import load_config
from s3_uploader.daemon import Daemon
from s3_uploader.destination import Destination, OwnKeys, normalise_endpoint
from s3_uploader.keys import KeyMaker
from s3_uploader.preflight import abort_stale_multipart
from s3_uploader.remote import MemoryRemote, PutOptions
from s3_uploader.store import Part, Store

MiB = 1024 * 1024


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
    assert abort_stale_multipart(d.store, d.remote, d.keymaker, d.cfg.s3.bucket) == 1
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


def test_the_endpoint_is_compared_normalised_and_no_endpoint_is_aws():
    assert normalise_endpoint("") == "aws"
    assert normalise_endpoint("HTTP://Example.COM:80/") == "http://example.com"
    assert normalise_endpoint("https://s3.example.com:443") == "https://s3.example.com"
    assert normalise_endpoint("http://127.0.0.1:8333") == "http://127.0.0.1:8333"
    assert normalise_endpoint("http://localhost:8333") != normalise_endpoint("http://127.0.0.1:8333")
    assert Destination.from_json("not json") is None


def test_a_rebase_resends_present_uploaded_files_drops_old_multipart_state_and_leaves_gone_files_alone(tmp_path):
    st = Store(tmp_path / "s.db")
    st.discover("up.txt", "old/up.txt", 1, 10**9, 1)
    st.start_upload("up.txt", 1, 10**9, 1)
    st.finish_upload("up.txt", 1, 10**9, 1, "m", "e")
    st.discover("gone.txt", "old/gone.txt", 1, 10**9, 2)
    st.start_upload("gone.txt", 1, 10**9, 2)
    st.finish_upload("gone.txt", 1, 10**9, 2, "m", "e")
    st.discover("del.txt", "old/del.txt", 1, 10**9, 3)
    st.start_upload("del.txt", 1, 10**9, 3)
    st.finish_upload("del.txt", 1, 10**9, 3, "m", "e")
    st.mark_removed("del.txt", "deleted")
    st.discover("big.bin", "old/big.bin", 20 * MiB, 10**9, 4)
    st.set_multipart("big.bin", "old-upload-id", 5 * MiB)
    st.add_part("big.bin", "old-upload-id", Part(1, 5 * MiB, "etag", "md5"))
    st.fail_upload("big.bin", "network", "boom", None, park=True)

    res = st.rebase_destination("destination", "new", lambda rel, mtime_ns: f"new/{rel}",
                                present=lambda rel: rel != "gone.txt")
    assert (res.resent, res.waiting, res.clashes) == (1, 1, [])
    up, gone, dele, big = (st.get(r) for r in ("up.txt", "gone.txt", "del.txt", "big.bin"))
    assert (up.state, up.key, up.etag, up.uploaded_at) == ("pending", "new/up.txt", None, None)
    assert (gone.state, gone.key) == ("uploaded", "old/gone.txt")
    assert (dele.state, dele.key) == ("deleted", "old/del.txt")
    assert (big.state, big.key, big.upload_id, big.part_size, big.attempts) == ("pending", "new/big.bin", None,
                                                                                 None, 0)
    assert st.parts("big.bin", "old-upload-id") == {}
    assert st.meta("destination") == "new"
    st.close()


def test_a_rebase_resolves_freed_keys_and_parks_a_real_clash_as_a_collision_never_keeping_the_old_key(
        tmp_path):
    st = Store(tmp_path / "s.db")  # files.key is UNIQUE
    for i, (rel, key) in enumerate([("a", "p/a"), ("b", "p/b"), ("c", "x"), ("d", "y")]):
        st.discover(rel, key, 1, 10**9, i)
    st.discover("z", "q/a", 1, 10**9, 9)
    st.start_upload("z", 1, 10**9, 9)
    st.finish_upload("z", 1, 10**9, 9, "m", "e")
    st.mark_removed("z", "deleted")  # a removed file's row keeps its key
    # a takes b's old key (b moves later in the pass, freeing it); c and d both want 'q/a', which the
    # deleted row z holds
    wanted = {"a": "p/b", "b": "p/c", "c": "q/a", "d": "q/a"}
    res = st.rebase_destination("destination", "new", lambda rel, _m: wanted[rel], present=lambda rel: True)
    assert {r: st.get(r).key for r in "ab"} == {"a": "p/b", "b": "p/c"}
    assert sorted(res.clashes) == [("c", "x", "q/a"), ("d", "y", "q/a")]
    for r in "cd":  # never sent to the new destination under the old one's key: parked, naming z
        rec = st.get(r)
        assert (rec.key, rec.state, rec.error_kind) == (None, "parked", "collision")
        assert "would go to S3 key q/a, which z already has" in rec.last_error
    assert st.get("z").key == "q/a"
    st.close()


def test_a_rebase_that_fails_part_way_changes_nothing(tmp_path):
    st = Store(tmp_path / "s.db")
    st.discover("a", "old/a", 1, 10**9, 1)
    st.discover("b", "old/b", 1, 10**9, 2)
    st.set_meta("destination", "old")

    def key_for(rel, _mtime_ns):
        if rel == "b":
            raise RuntimeError("stop here")
        return f"new/{rel}"
    with pytest.raises(RuntimeError):
        st.rebase_destination("destination", "new", key_for, present=lambda rel: True)
    assert (st.get("a").key, st.get("b").key, st.meta("destination")) == ("old/a", "old/b", "old")
    st.close()


def test_a_reloaded_bucket_or_prefix_is_kept_until_the_restart_which_sends_every_file_again(tmp_path, caplog):
    from s3_uploader.reload import Reloader
    (tmp_path / "in").mkdir()
    sections = {"watch": {"directory_to_watch": tmp_path / "in"}, "s3": {"bucket": "a", "prefix": "p"},
                "daemon": {"db_path": tmp_path / "s.db"}}
    path = write_config(tmp_path / "c.ini", sections)
    running = load_config(path)
    applied = []
    sections["s3"] = {"bucket": "b", "prefix": "q"}
    write_config(path, sections)
    assert Reloader(path, lambda: running, lambda new, changed: applied.append(new)).reload() is False
    assert applied == []
    for key in ("bucket", "prefix"):
        assert (f"Config change to [s3] {key} requires a restart; keeping the running value (after the restart, "
                f"every file still present locally is uploaded to the new destination)") in caplog.text

"""Walking the tree: regular files only, nothing opened, nothing outside the tree."""
from __future__ import annotations

import logging
import os
import socket
import time

import pytest
from helpers import Clock, SimpleLive, wait_for

from s3_uploader.keys import Filters
from s3_uploader.scanner import Scanner


def walk_all(scanner):
    return {f.rel: f.size for _d, files in scanner.walk() for f in files}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "deep.txt").write_text("deep")
    (root / "top.txt").write_text("top")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    return root, outside


def test_walk_lists_regular_files_and_skips_hidden(tree):
    root, _ = tree
    assert walk_all(Scanner(root, Filters())) == {"a/b/deep.txt": 4, "top.txt": 3}


def test_fifo_socket_and_symlinks_are_reported_not_opened(tree, caplog):
    root, outside = tree
    os.mkfifo(root / "pipe")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "sock"))
    os.symlink(outside / "secret.txt", root / "link-out.txt")
    os.symlink(outside, root / "dir-out")
    try:
        with caplog.at_level(logging.INFO, logger="s3_uploader"):
            files = walk_all(Scanner(root, Filters()))
        assert files == {"a/b/deep.txt": 4, "top.txt": 3}
        text = caplog.text
        assert "Skipping a FIFO" in text and "Skipping a socket" in text
        assert "Skipping symlink (follow_symlinks = false): link-out.txt" in text
    finally:
        s.close()


def test_following_symlinks_never_leaves_the_tree_and_survives_loops(tree, caplog):
    root, outside = tree
    os.symlink(outside / "secret.txt", root / "link-out.txt")
    os.symlink(root / "a", root / "a" / "b" / "loop")
    os.symlink(root / "top.txt", root / "alias.txt")
    with caplog.at_level(logging.INFO, logger="s3_uploader"):
        files = walk_all(Scanner(root, Filters(), follow_symlinks=True))
    assert files == {"a/b/deep.txt": 4, "top.txt": 3, "alias.txt": 3}
    assert "leads outside the watched directory" in caplog.text
    assert "Symlink loop" in caplog.text


def test_repeated_scans_report_a_skipped_entry_once(tree, caplog):
    root, _ = tree
    os.mkfifo(root / "pipe")
    sc = Scanner(root, Filters())
    with caplog.at_level(logging.INFO, logger="s3_uploader"):
        walk_all(sc)
        walk_all(sc)
    assert caplog.text.count("Skipping a FIFO") == 1


def test_stat_one_refuses_links_out_and_non_regular_files(tree):
    root, outside = tree
    os.mkfifo(root / "pipe")
    os.symlink(outside / "secret.txt", root / "link-out.txt")
    sc = Scanner(root, Filters(), follow_symlinks=True)
    assert sc.stat_one("top.txt").size == 3
    assert sc.stat_one("pipe") is None
    assert sc.stat_one("link-out.txt") is None
    assert sc.stat_one("../outside/secret.txt") is None
    assert sc.stat_one("missing.txt") is None


def test_a_subtree_walk_keeps_paths_relative_to_the_root(tree):
    root, _ = tree
    sc = Scanner(root, Filters(include=("a/*",)))
    assert {f.rel for _d, fs in sc.walk("a") for f in fs} == {"a/b/deep.txt"}


def test_a_followed_symlink_retargeted_outside_after_its_check_is_not_queued(tree, caplog):
    from s3_uploader.config import parse_config
    from s3_uploader.daemon import Daemon
    from s3_uploader.remote import MemoryRemote
    from s3_uploader.scanner import FileStat
    from s3_uploader.store import Store

    root, outside = tree
    link = root / "link.txt"
    os.symlink(root / "top.txt", link)
    cfg = parse_config(f"[watch]\ndirectory_to_watch = {root}\nfollow_symlinks = true\n[s3]\nbucket = bkt\n"
                       f"[daemon]\ndb_path = {root.parent / 's.db'}\n")
    with Store(cfg.daemon.db_path) as store:
        d = Daemon(cfg, MemoryRemote(), store)
        st = d.scanner.stat_one("link.txt")  # checked while it pointed inside
        store.discover_many([("link.txt", "link.txt", st.size, st.mtime_ns, st.ino)])
        link.unlink()
        os.symlink(outside / "secret.txt", link)  # retargeted before the job is made
        with caplog.at_level(logging.WARNING, logger="s3_uploader"):
            d.scheduler.handover.make_job("link.txt", FileStat(*st), d.scanner.abspath("link.txt"), store.get("link.txt"))
        assert not d.scheduler.ready and "link.txt" not in d.inflight
        assert "Symlink leads outside the watched directory, not followed: link.txt" in caplog.text


# -- quick passes: a folder whose entries are unchanged is not listed again --------------------------

HOUR_NS = 3600 * 10**9


def _backdate(root, *rels):
    """Set the mtime of folders (and the root) an hour back: as a folder at rest looks."""
    past = time.time_ns() - HOUR_NS
    for rel in ("",) + rels:
        os.utime(root / rel if rel else root, ns=(past, past))


def _listed(scanner, quick):
    """{folder: sorted file names} of the folders a walk listed (a skipped folder comes empty)."""
    out = {}
    for d, files in scanner.walk(quick=quick):
        if files:
            out.setdefault(d, []).extend(f.rel.rsplit("/", 1)[-1] for f in files)
    return {d: sorted(v) for d, v in out.items()}


@pytest.fixture
def cams(tmp_path):
    root = tmp_path / "cams"
    for d in ("new", "deleted", "renamed", "same"):
        (root / "cam1" / d).mkdir(parents=True)
        for n in ("a.jpg", "b.jpg"):
            (root / "cam1" / d / n).write_bytes(b"jpg")
    _backdate(root, "cam1", "cam1/new", "cam1/deleted", "cam1/renamed", "cam1/same")
    return root


def test_a_quick_walk_lists_only_the_folders_with_a_new_deleted_or_renamed_file(cams):
    sc = Scanner(cams, Filters())
    assert len(_listed(sc, quick=False)) == 4  # the first walk lists every folder and remembers it
    (cams / "cam1" / "new" / "c.jpg").write_bytes(b"jpg")
    (cams / "cam1" / "deleted" / "a.jpg").unlink()
    (cams / "cam1" / "renamed" / "a.jpg").rename(cams / "cam1" / "renamed" / "z.jpg")
    sc.memo.begin_pass(full=False)
    assert _listed(sc, quick=True) == {"cam1/new": ["a.jpg", "b.jpg", "c.jpg"], "cam1/deleted": ["b.jpg"],
                                       "cam1/renamed": ["b.jpg", "z.jpg"]}
    # the unchanged folders were stat'ed, not listed: the root, cam1 and cam1/same (its 2 files counted)
    assert (sc.memo.skipped_folders, sc.memo.skipped_files) == (3, 2)


def test_a_new_subfolder_deep_down_is_found_by_a_quick_walk(cams):
    sc = Scanner(cams, Filters())
    _listed(sc, quick=False)
    (cams / "cam1" / "same" / "13").mkdir()
    (cams / "cam1" / "same" / "13" / "x.jpg").write_bytes(b"jpg")
    assert _listed(sc, quick=True) == {"cam1/same": ["a.jpg", "b.jpg"], "cam1/same/13": ["x.jpg"]}


def test_a_folder_changed_within_the_racy_margin_of_its_listing_is_listed_again(cams):
    """With a fake wall clock: a folder is remembered only once its mtime is older than RACY_NS at the
    listing (a file created in the same timestamp tick after the stat could leave the mtime as it was)."""
    from s3_uploader.scanner import RACY_NS, FolderMemo
    mtime = os.stat(cams / "cam1" / "same").st_mtime_ns
    wall = {"ns": mtime + RACY_NS // 2}
    sc = Scanner(cams, Filters(), memo=FolderMemo(wall_ns=lambda: wall["ns"]))
    _listed(sc, quick=False)
    assert "cam1/same" in _listed(sc, quick=True)  # too fresh to be trusted: listed again...
    wall["ns"] = mtime + RACY_NS + 1
    assert "cam1/same" in _listed(sc, quick=True)  # ...and remembered by that listing, now old enough
    assert _listed(sc, quick=True) == {}


def test_an_in_place_edit_is_found_by_its_event_or_by_the_next_full_walk(cams):
    """Editing a file in place does not change its folder: a quick walk misses it (the documented
    limit); looking at the file by itself (what an event makes the scheduler do) or a full walk finds it."""
    sc = Scanner(cams, Filters())
    _listed(sc, quick=False)
    (cams / "cam1" / "same" / "a.jpg").write_bytes(b"edited in place")
    assert "cam1/same" not in _listed(sc, quick=True)
    assert sc.stat_one("cam1/same/a.jpg").size == 15  # the event's hint
    assert "cam1/same" in _listed(sc, quick=True)
    (cams / "cam1" / "deleted" / "b.jpg").write_bytes(b"edited, no event")
    assert "cam1/deleted" not in _listed(sc, quick=True)
    assert _listed(sc, quick=False)["cam1/deleted"] == ["a.jpg", "b.jpg"]


def test_a_folder_left_unsettled_while_listed_is_not_remembered(cams):
    sc = Scanner(cams, Filters())
    for d, _files in sc.walk():
        if d == "cam1/new":
            sc.memo.unsettled(d)  # what discovery says of a folder with a file to upload
    assert set(_listed(sc, quick=True)) == {"cam1/new"}


def test_the_full_pass_is_due_at_its_interval_and_forgets_every_stamp():
    from s3_uploader.scanner import FolderMemo
    clock = Clock(1000.0)
    memo = FolderMemo()
    assert memo.full_due(clock(), 3600)  # none yet
    memo.full_done(clock())
    clock.t += 3599
    assert not memo.full_due(clock(), 3600)
    clock.t += 1
    assert memo.full_due(clock(), 3600)
    assert memo.full_due(clock(), 0)  # 0: every pass is full


def test_discovery_skips_settled_folders_in_quick_scans_until_the_full_scan_is_due(cams, tmp_path, caplog):
    """A folder with a file still to upload is listed at every scan; one whose files are all uploaded
    is skipped by quick scans; the full scan lists it again."""
    from s3_uploader.config import parse_config
    from s3_uploader.daemon import Daemon
    from s3_uploader.remote import MemoryRemote
    from s3_uploader.store import Store

    cfg = parse_config(f"[watch]\ndirectory_to_watch = {cams}\nfull_scan_interval = 1h\n[s3]\nbucket = bkt\n"
                       f"[daemon]\ndb_path = {tmp_path / 's.db'}\n")
    clock = Clock(5000.0)
    with Store(cfg.daemon.db_path) as store:
        d = Daemon(cfg, MemoryRemote(), store, clock=clock)
        disc, memo = d.discovery, d.scanner.memo
        assert disc.full_scan() == 8  # all new: every folder unsettled
        for rel in ("same/a.jpg", "same/b.jpg", "new/a.jpg", "new/b.jpg"):
            r = store.get(f"cam1/{rel}")
            assert store.record_sent([(r.rel, r.size, r.mtime_ns, r.inode, "0" * 32, '"e"')]) == [True]
        disc.full_scan(quick=True)  # lists every folder (none remembered yet): same and new are now at rest
        while not d.candidates.empty():
            d.candidates.get_nowait()
        with caplog.at_level("DEBUG", logger="s3_uploader.discovery"):
            assert disc.full_scan(quick=True) == 4  # deleted/ and renamed/ still wait: queued again
        assert memo.skipped_folders == 4 and memo.skipped_files == 4  # root, cam1, same, new
        assert "Scan: 8 files, 4 to upload" in caplog.text  # the skipped folders' files still counted
        assert not memo.full_due(clock(), cfg.watch.full_scan_interval)
        clock.t += 3600
        assert memo.full_due(clock(), cfg.watch.full_scan_interval)
        disc.full_scan(quick=False)
        assert memo.skipped_folders == 0 and memo.full_at == clock.t


def test_a_requested_rescan_is_full_and_the_others_quick_until_full_scan_interval(cams, tmp_path):
    """Events lost, no room for an event's file, a reload: each asks for a rescan (``scan_request``),
    and that one lists every folder; the periodic ones in between are quick."""
    import queue
    import threading

    from s3_uploader.config import parse_config
    from s3_uploader.discovery import Discovery
    from s3_uploader.keys import KeyMaker
    from s3_uploader.runmode import RunMode
    from s3_uploader.store import Store
    from s3_uploader.views import Stats

    cfg = parse_config(f"[watch]\ndirectory_to_watch = {cams}\nscan_interval = 0.1s\nfull_scan_interval = 1h\n"
                       f"[s3]\nbucket = b\n[daemon]\ndb_path = {tmp_path / 's.db'}\n")
    scanner, filters = Scanner(cams, Filters()), Filters()
    request, stop = threading.Event(), threading.Event()
    with Store(cfg.daemon.db_path) as store:
        disc = Discovery(
            str(cams), live=SimpleLive(cfg, store, scanner, filters, KeyMaker("")), candidates=queue.Queue(),
            folder_requests=queue.Queue(),
            scan_request=request, stop=stop, wake=threading.Event(), scan_done=threading.Event(), stats=Stats(),
            heartbeats={}, is_inflight=lambda rel: False, set_aside=lambda *a, **kw: None, watching=lambda: False,
            mode=RunMode.SERVICE, clock=time.monotonic, wall=time.time)
        kinds: list = []
        real = disc.full_scan
        disc.full_scan = lambda quick=False: (kinds.append("quick" if quick else "full"), real(quick))[1]
        t = threading.Thread(target=disc.run, name="test-scanner")
        t.start()
        try:
            wait_for(lambda: len(kinds) >= 3, what="three rescans")
            asked_at = len(kinds)
            request.set()
            wait_for(lambda: len(kinds) >= asked_at + 2, what="the requested rescan")
        finally:
            stop.set()
            request.set()
            t.join(10)
        assert not t.is_alive()
    assert kinds[0] == "full" and set(kinds[1:asked_at]) == {"quick"}
    assert "full" in kinds[asked_at:asked_at + 2]  # the pass that started after the request

"""Walking the tree: regular files only, nothing opened, nothing outside the tree."""
from __future__ import annotations

import logging
import os
import socket

import pytest

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

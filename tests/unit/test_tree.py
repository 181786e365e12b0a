"""Tree-safe file operations (s3_uploader.tree) and the uploader's open through them: nothing
outside the watched tree is opened or changed, whatever a folder on the way has become."""
from __future__ import annotations

import ctypes
import os
import struct
import sys
from pathlib import Path

import pytest
from helpers import cannot_run

from s3_uploader import tree
from s3_uploader.remote import MemoryRemote, PutOptions
from s3_uploader.scanner import FileStat
from s3_uploader.store import Store
from s3_uploader.uploader import Job, Settings, Uploader

pytestmark = pytest.mark.skipif(not tree.SUPPORTED, reason="dir_fd operations are POSIX-only")

SETTINGS = Settings(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=2,
                    put_options=PutOptions(), follow_symlinks=False)
IN_OPEN = 0x20
IN_NONBLOCK = os.O_NONBLOCK


class OpenWatch:
    """Counts the opens of files in one folder, as the kernel reports them (inotify IN_OPEN)."""

    def __init__(self, folder: Path):
        if not sys.platform.startswith("linux"):
            cannot_run("inotify is Linux-only")
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(IN_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            cannot_run(f"inotify_init1 failed ({os.strerror(ctypes.get_errno())})")
        if self.libc.inotify_add_watch(self.fd, os.fsencode(str(folder)), IN_OPEN) < 0:
            os.close(self.fd)
            cannot_run(f"inotify_add_watch failed ({os.strerror(ctypes.get_errno())})")

    def opened(self) -> list:
        """Names opened since the watch began (reads what the kernel queued; never blocks)."""
        names = []
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return names
        off = 0
        while off < len(buf):
            _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, off)
            name = buf[off + 16:off + 16 + length].rstrip(b"\0").decode()
            if mask & IN_OPEN:
                names.append(name)
            off += 16 + length
        return names

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def uploader(tmp_path):
    store = Store(tmp_path / "s.db")
    remote = MemoryRemote()
    up = Uploader(remote, store, lambda: SETTINGS, part_workers=1)
    yield up, remote
    up.close()
    store.close()


def test_a_folder_swapped_for_a_symlink_after_the_check_is_never_opened_through_by_the_uploader(tmp_path, uploader):
    up, remote = uploader
    root = tmp_path / "inbox"
    (root / "cam").mkdir(parents=True)
    inside = root / "cam" / "a.bin"
    inside.write_bytes(b"inside")
    st = os.lstat(inside)
    job = Job("cam/a.bin", str(inside), "cam/a.bin", FileStat("cam/a.bin", st.st_size, st.st_mtime_ns,
                                                               st.st_ino, st.st_dev))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.bin").write_bytes(b"secret")
    # checked (the job holds the signature); now the folder is swapped for a link to outside the tree
    (root / "cam").rename(root / "cam.moved")
    (root / "cam").symlink_to(outside, target_is_directory=True)
    watch = OpenWatch(outside)
    try:
        outcomes = [up.upload(job), up.read_small(job)]  # the worker's path and the small-file sender's
        assert watch.opened() == [], "a file outside the watched tree was opened"
    finally:
        watch.close()
    assert [(o.kind, "symlink" in o.reason) for o in outcomes] == [("changed", True)] * 2
    assert remote.objects == {}


def test_the_uploader_still_opens_a_file_in_a_nested_folder_and_refuses_a_symlinked_file(tmp_path, uploader):
    up, remote = uploader
    p = tmp_path / "inbox" / "a" / "b" / "c.bin"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"nested")
    st = os.lstat(p)
    job = Job("a/b/c.bin", str(p), "a/b/c.bin", FileStat("a/b/c.bin", st.st_size, st.st_mtime_ns, st.st_ino,
                                                         st.st_dev))
    assert up.upload(job).kind == "uploaded" and remote.objects["a/b/c.bin"][0] == b"nested"
    p.rename(p.with_name("real.bin"))
    p.symlink_to(p.with_name("real.bin"))
    assert up.upload(job).kind == "changed"


def test_open_folder_refuses_a_symlink_or_a_file_on_the_way_and_can_create_the_levels(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (root / "link").symlink_to(tmp_path / "out", target_is_directory=True)
    (root / "file").write_bytes(b"")
    with pytest.raises(tree.OutsideTree):
        tree.open_folder(str(root), ["link"])
    with pytest.raises(tree.OutsideTree):
        tree.open_folder(str(root), ["file", "x"])
    with pytest.raises(FileNotFoundError):
        tree.open_folder(str(root), ["a", "missing"])
    with tree.open_folder(str(root), ["a", "new", "deeper"], create=True) as f:
        f.mkdir("x")
    assert (root / "a" / "new" / "deeper" / "x").is_dir()
    with pytest.raises(tree.OutsideTree):
        tree.open_folder(str(root), ["link", "made"], create=True)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_no_replace_rename_never_replaces_and_a_quarantine_name_round_trips(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    with tree.open_folder(str(tmp_path), []) as f:
        with pytest.raises(FileExistsError):
            f.rename_noreplace("a", "b")
        q = tree.quarantine_name("a")
        f.rename("a", q)
        assert tree.is_quarantine_name(q) and tree.original_name(q) == "a"
        f.rename_noreplace(q, "a")
    assert (tmp_path / "a").read_bytes() == b"a" and (tmp_path / "b").read_bytes() == b"b"
    long = "x" * 250
    q = tree.quarantine_name(long)
    assert len(q) <= tree.NAME_MAX and tree.original_name(q) is None


def test_a_relative_path_splits_into_its_folders_and_its_name():
    assert tree.split_rel("a/b/c.mp4") == (["a", "b"], "c.mp4")
    assert tree.split_rel("c.mp4") == ([], "c.mp4")


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "walk"])
def test_open_file_answers_alike_by_openat2_and_by_the_walk(tmp_path, monkeypatch, openat2):
    # one openat2 call where the kernel has it, the folder walk elsewhere: the same files opened, the
    # same refusals (a symlinked folder is OutsideTree, a symlinked file ELOOP, a missing one ENOENT)
    if openat2 and tree._openat2 is None:
        cannot_run("no openat2 on this kernel (or a sandbox refuses it): the walk alone answers")
    if not openat2:
        monkeypatch.setattr(tree, "_openat2", None)
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "c.bin").write_bytes(b"nested")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "c.bin").write_bytes(b"outside")
    (root / "a" / "link").symlink_to(tmp_path / "out", target_is_directory=True)
    (root / "a" / "b" / "file-link").symlink_to(root / "a" / "b" / "c.bin")
    walked = []
    real_open_folder = tree.open_folder
    monkeypatch.setattr(tree, "open_folder", lambda *a, **k: walked.append(a) or real_open_folder(*a, **k))
    fd = tree.open_file(str(root), "a/b/c.bin", os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"nested"
    finally:
        os.close(fd)
    assert bool(walked) is not openat2  # the common case is one openat2 call, no walk
    with pytest.raises(tree.OutsideTree):
        tree.open_file(str(root), "a/link/c.bin", os.O_RDONLY)
    with pytest.raises(OSError) as e:
        tree.open_file(str(root), "a/b/file-link", os.O_RDONLY)
    assert e.value.errno == 40 and not isinstance(e.value, tree.OutsideTree)
    with pytest.raises(FileNotFoundError):
        tree.open_file(str(root), "a/b/missing.bin", os.O_RDONLY)
    with pytest.raises(tree.OutsideTree):
        tree.open_file(str(root), "a/b/c.bin/x", os.O_RDONLY)


def test_open_file_falls_back_to_the_walk_for_good_where_openat2_is_refused(tmp_path, monkeypatch):
    # a seccomp filter (some container runtimes) answers ENOSYS or EPERM: asked once, then the walk
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x")
    calls = []

    def refused(*args):
        calls.append(args)
        ctypes.set_errno(38)  # ENOSYS
        return -1
    monkeypatch.setattr(tree, "_openat2", refused)
    for _ in range(2):
        os.close(tree.open_file(str(tmp_path), "a/f", os.O_RDONLY))
    assert len(calls) == 1 and tree._openat2 is None

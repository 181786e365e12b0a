"""Cleanup, unit tier: the pure decision core, then one pass (Cleaner) over real files and a real
SQLite store with the in-memory remote, an injected clock and an injected free-space function."""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import List, Optional

import pytest
from helpers import Clock

from s3_uploader import cleanup as cleanup_mod
from s3_uploader.cleanup import (BUSY, CANNOT_STAT, CONTENT_DIFFERS, ETAG_DIFFERS, FILE_GONE, FILE_MODIFIED, FORGET, HOLD,
                                 LIST_FAILED, NOT_DUE, NOT_REGULAR, NOT_UPLOADED, OBJECT_MISSING, OPEN_FOR_WRITING,
                                 OUTSIDE_TREE, REMOVE, REQUEUE, SIZE_DIFFERS, ARCHIVE_EXISTS, Cleaner,
                                 CleanupSettings, LocalState, cleanup_lines, cleanup_status, decide, etag_matches)
from s3_uploader.config import FreeSpace, parse_config
from s3_uploader.remote import MemoryRemote, ObjectInfo, PutOptions, multipart_etag
from s3_uploader.store import Record, Store
from s3_uploader.tree import QUARANTINE_PREFIX

T0 = 1_800_000_000.0
DAY = 86400.0


def rec(**kw) -> Record:
    base = dict(rel="cam/a.mp4", key="site/cam/a.mp4", state="uploaded", size=10, mtime_ns=5, inode=7,
                md5="0" * 32, etag="0" * 32, uploaded_at=T0)
    base.update(kw)
    return Record(**base)


def obj(size: int = 10, etag: str = "0" * 32) -> ObjectInfo:
    return ObjectInfo("site/cam/a.mp4", size, etag)


SAME = LocalState(size=10, mtime_ns=5, inode=7)
AGE = CleanupSettings(delete_after=DAY)


# -- the decision core -------------------------------------------------------------------------------

def test_a_proven_file_is_removed_once_delete_after_has_passed():
    assert decide(rec(), obj(), SAME, T0 + DAY, AGE).action == REMOVE


def test_a_file_is_held_until_delete_after_has_passed_and_forever_when_it_is_zero():
    assert decide(rec(), obj(), SAME, T0 + DAY - 1, AGE).reason == NOT_DUE
    never = CleanupSettings(delete_after=0)
    assert decide(rec(), obj(), SAME, T0 + 1000 * DAY, never).reason == NOT_DUE


def test_free_space_pressure_removes_a_proven_file_before_delete_after():
    never = CleanupSettings(delete_after=0, min_free_space=FreeSpace(bytes=1))
    assert decide(rec(), obj(), SAME, T0, never, for_space=True).action == REMOVE


def test_a_row_not_recorded_as_uploaded_is_never_removed_even_for_space():
    for state in ("pending", "uploading", "failed", "parked", "deleted"):
        d = decide(rec(state=state), obj(), SAME, T0 + DAY, AGE, for_space=True)
        assert (d.action, d.reason) == (HOLD, NOT_UPLOADED)


@pytest.mark.parametrize("listed, reason", [(None, OBJECT_MISSING), (obj(size=11), SIZE_DIFFERS),
                                            (obj(etag="1" * 32), ETAG_DIFFERS)])
def test_an_object_missing_or_different_keeps_the_file_and_queues_it_again(listed, reason):
    d = decide(rec(), listed, SAME, T0 + DAY, AGE)
    assert (d.action, d.reason) == (REQUEUE, reason)


def test_a_file_changed_since_its_upload_is_kept_and_queued_again():
    for local in (LocalState(size=11, mtime_ns=5, inode=7), LocalState(size=10, mtime_ns=6, inode=7),
                  LocalState(size=10, mtime_ns=5, inode=8)):
        d = decide(rec(), obj(), local, T0 + DAY, AGE)
        assert (d.action, d.reason) == (REQUEUE, FILE_MODIFIED)


def test_a_symlink_or_special_file_at_the_path_is_never_removed():
    d = decide(rec(), obj(), LocalState(regular=False, size=10, mtime_ns=5, inode=7), T0 + DAY, AGE)
    assert (d.action, d.reason) == (HOLD, NOT_REGULAR)


def test_a_path_outside_the_watched_tree_is_never_touched():
    d = decide(rec(), obj(), LocalState(inside=False, exists=False, regular=False), T0 + DAY, AGE)
    assert (d.action, d.reason) == (HOLD, OUTSIDE_TREE)


def test_a_path_that_cannot_be_stat_is_held():
    d = decide(rec(), obj(), LocalState(regular=False, error="Permission denied"), T0 + DAY, AGE)
    assert (d.action, d.reason, d.detail) == (HOLD, CANNOT_STAT, "Permission denied")


def test_a_file_already_gone_is_forgotten_and_says_when_s3_does_not_prove_it_either():
    gone = LocalState(exists=False, regular=False)
    d = decide(rec(), obj(), gone, T0 + DAY, AGE)
    assert (d.action, d.reason, d.detail) == (FORGET, FILE_GONE, "")
    d = decide(rec(), None, gone, T0 + DAY, AGE)
    assert d.action == FORGET and "not in the bucket" in d.detail


def test_etags_compare_single_part_by_md5_and_multipart_by_the_recorded_etag():
    md5 = hashlib.md5(b"x").hexdigest()
    single = rec(md5=md5, etag=md5)
    assert etag_matches(single, f'"{md5.upper()}"') is True
    assert etag_matches(single, "f" * 32) is False
    assert etag_matches(single, "f" * 32 + "-2") is False  # replaced by a multipart object
    assert etag_matches(single, "") is None
    mp = multipart_etag([hashlib.md5(b"a").digest(), hashlib.md5(b"b").digest()])
    multi = rec(md5=None, etag=mp)
    assert etag_matches(multi, mp) is True
    assert etag_matches(multi, "f" * 32 + "-2") is False
    assert etag_matches(multi, "f" * 32) is False  # never size alone: see tests/unit/test_proof.py
    assert etag_matches(rec(md5=None, etag=None), "f" * 32) is None
    kms = rec(md5=md5, etag="a" * 32)  # SSE-KMS: the ETag is not the MD5; the recorded one must match
    assert etag_matches(kms, "a" * 32) is True and etag_matches(kms, "b" * 32) is False


def test_settings_come_from_the_cleanup_section():
    cfg = parse_config("[watch]\ndirectory_to_watch = /tmp/x\n[s3]\nbucket = b\n[cleanup]\ndelete_after = 2h\n"
                       "min_free_space = 10%\ncleanup_batch_size = 7\ncleanup_prefix_batch_size = 3\n"
                       "cleanup_dry_run = true\nremove_empty_dirs = false\n")
    s = CleanupSettings.from_config(cfg)
    assert (s.delete_after, s.min_free_space.percent, s.batch_size, s.prefix_batch_size, s.dry_run,
            s.remove_empty_dirs, s.action, s.enabled) == (7200.0, 10.0, 7, 3, True, False, "delete", True)
    off = CleanupSettings.from_config(parse_config("[watch]\ndirectory_to_watch = /tmp/x\n[s3]\nbucket = b\n"))
    assert not off.enabled


# -- one pass over real files ------------------------------------------------------------------------

class World:
    """A watched folder, a store and a MemoryRemote, with files 'uploaded' the way the uploader does."""

    def __init__(self, tmp: Path, **settings):
        self.root = tmp / "inbox"
        self.root.mkdir()
        self.clock = Clock(T0)
        self.store = Store(tmp / "state.db", clock=self.clock)
        self.remote = MemoryRemote()
        self.settings = CleanupSettings(**{"delete_after": DAY, **settings})
        self.requeued: List[str] = []
        self.busy: set = set()
        self.writing: set = set()
        self.capacity: Optional[int] = None
        self.cleaner = Cleaner(self.root, self.store, self.remote, lambda: self.settings,
                               free_space=self.disk, is_busy=lambda rel: rel in self.busy,
                               is_being_written=lambda path, dev, ino, fresh: path in self.writing,
                               on_requeue=self.requeued.append)

    def disk(self, path: str):
        """A filesystem of ``capacity`` bytes holding only the watched files."""
        used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file() and not p.is_symlink())
        return (self.capacity, used, self.capacity - used)

    def file(self, rel: str, data: bytes, upload: bool = True, mtime: Optional[float] = None) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if mtime is not None:
            os.utime(p, (mtime, mtime))
        st = os.lstat(p)
        key = "site/" + rel
        self.store.discover(rel, key, st.st_size, st.st_mtime_ns, st.st_ino)
        if upload:
            digest = hashlib.md5(data).digest()
            etag = self.remote.put_object(key, data, len(data), digest, PutOptions())
            self.store.start_upload(rel, st.st_size, st.st_mtime_ns, st.st_ino)
            self.store.finish_upload(rel, st.st_size, st.st_mtime_ns, st.st_ino, digest.hex(), etag)
        return p

    def run(self, at: float = T0 + DAY):
        return self.cleaner.run_pass(at)

    def state(self, rel: str) -> str:
        return self.store.get(rel).state

    def close(self):
        self.store.close()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def test_a_pass_deletes_due_proven_files_and_removes_emptied_folders_but_never_the_root(world):
    world.file("cam1/2026/a.mp4", b"a" * 100)
    world.file("cam1/2026/b.mp4", b"b" * 50)
    world.file("top.txt", b"t")
    world.clock.t = T0 + 10  # uploaded later: not yet due at T0 + DAY
    world.file("cam2/late.mp4", b"late")
    res = world.run(T0 + DAY)
    assert (res.freed_files, res.freed_bytes, res.examined) == (3, 151, 3)
    assert sorted(p.name for p in world.root.rglob("*")) == ["cam2", "late.mp4"]
    assert world.root.is_dir()
    assert [world.state(r) for r in ("cam1/2026/a.mp4", "top.txt", "cam2/late.mp4")] == \
        ["deleted", "deleted", "uploaded"]
    status = cleanup_status(world.store)
    assert (status["files_freed"], status["bytes_freed"]) == (3, 151)
    assert world.run(T0 + DAY + 10).freed_files == 1
    assert list(world.root.iterdir()) == []


def test_folders_are_kept_when_remove_empty_dirs_is_off(world):
    world.settings = CleanupSettings(delete_after=DAY, remove_empty_dirs=False)
    world.file("cam1/a.mp4", b"a")
    world.run()
    assert (world.root / "cam1").is_dir() and not (world.root / "cam1" / "a.mp4").exists()


def test_a_pass_lists_each_folder_once_not_each_file(world):
    for i in range(200):
        world.file(f"cam{i % 4}/f{i:03d}.jpg", b"x" * (i + 1))
    res = world.run()
    assert world.remote.calls.get("list_folder") == 4
    assert world.remote.calls.get("head", 0) == 0
    assert (res.folders_listed, res.freed_files) == (4, 200)


def test_batch_limits_bound_each_pass_and_later_passes_finish_the_work(world):
    for i in range(200):
        world.clock.t = T0 + i  # uploaded folder by folder: cam0 first
        world.file(f"cam{i // 50}/f{i:03d}.jpg", b"x")
    world.settings = CleanupSettings(delete_after=1, batch_size=30, prefix_batch_size=2)
    passes = 0
    while world.store.counts()["uploaded"]:
        before = world.remote.calls.get("list_folder", 0)
        res = world.run(T0 + DAY)
        passes += 1
        assert res.examined <= 30 and res.folders_listed <= 2
        assert world.remote.calls["list_folder"] - before <= 2
        assert passes < 20, "passes did not make progress"
    assert passes == 7  # ceil(200 / 30)


def test_the_prefix_limit_stops_a_batch_at_the_first_folder_over_it(world):
    for i in range(9):
        world.clock.t = T0 + i
        world.file(f"d{i % 3}/f{i}.jpg", b"x")  # interleaved folders: d0 d1 d2 d0 d1 d2 ...
    world.settings = CleanupSettings(delete_after=1, prefix_batch_size=2)
    res = world.run(T0 + DAY)
    assert (res.folders_listed, res.examined, res.more) == (2, 2, True)
    assert world.remote.calls["list_folder"] == 2


def test_an_object_deleted_behind_our_back_keeps_the_file_and_queues_it_for_upload(world, caplog):
    p = world.file("cam/a.mp4", b"abc")
    world.remote.delete("site/cam/a.mp4")
    with caplog.at_level(logging.WARNING, logger="s3_uploader.cleanup"):
        res = world.run()
    assert p.read_bytes() == b"abc"
    assert world.state("cam/a.mp4") == "pending" and world.requeued == ["cam/a.mp4"]
    assert res.requeued == 1 and res.held == {OBJECT_MISSING: 1}
    assert "Not deleting cam/a.mp4: object missing" in caplog.text
    assert cleanup_status(world.store)["requeued"] == 1


def test_an_object_of_another_size_or_content_keeps_the_file(world):
    a = world.file("a.bin", b"aaaa")
    b = world.file("b.bin", b"bbbb")
    world.remote.objects["site/a.bin"] = (b"aaaaa", hashlib.md5(b"aaaaa").hexdigest(), PutOptions())
    world.remote.objects["site/b.bin"] = (b"BBBB", hashlib.md5(b"BBBB").hexdigest(), PutOptions())
    res = world.run()
    assert a.exists() and b.exists()
    assert res.held == {SIZE_DIFFERS: 1, ETAG_DIFFERS: 1} and res.freed_files == 0
    assert world.state("a.bin") == world.state("b.bin") == "pending"


def test_a_file_modified_after_its_upload_is_kept_and_queued_with_its_new_signature(world):
    p = world.file("a.log", b"one")
    p.write_bytes(b"one two")
    res = world.run()
    assert p.read_bytes() == b"one two" and res.held == {FILE_MODIFIED: 1}
    row = world.store.get("a.log")
    assert (row.state, row.size) == ("pending", 7)


def test_a_symlink_swapped_in_for_an_uploaded_file_is_never_deleted_or_followed(world, tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"abc")
    p = world.file("a.txt", b"abc")
    p.unlink()
    p.symlink_to(outside)
    res = world.run()
    assert p.is_symlink() and outside.read_bytes() == b"abc"
    assert res.held == {NOT_REGULAR: 1}


def test_a_folder_swapped_for_a_symlink_to_outside_the_tree_is_never_entered(world, tmp_path):
    world.file("cam/a.txt", b"abc")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.txt").write_bytes(b"abc")
    (world.root / "cam" / "a.txt").unlink()
    (world.root / "cam").rmdir()
    (world.root / "cam").symlink_to(elsewhere, target_is_directory=True)
    res = world.run()
    assert (elsewhere / "a.txt").read_bytes() == b"abc"
    assert res.held == {OUTSIDE_TREE: 1}


def test_files_in_flight_or_open_for_writing_are_held_back(world):
    world.file("busy.bin", b"1")
    p = world.file("open.bin", b"2")
    world.busy.add("busy.bin")
    world.writing.add(str(p))
    res = world.run()
    assert res.held == {BUSY: 1, OPEN_FOR_WRITING: 1}
    assert world.state("busy.bin") == world.state("open.bin") == "uploaded"


def test_a_failed_listing_holds_that_folders_files_and_the_pass_goes_on(world):
    class Flaky(MemoryRemote):
        def list_folder(self, folder):
            if folder == "site/bad/":
                raise ConnectionError("connection reset")
            return super().list_folder(folder)

    flaky = Flaky()
    flaky.objects = world.remote.objects
    world.cleaner.remote = flaky
    bad = world.file("bad/a.bin", b"1")
    good = world.file("good/b.bin", b"2")
    res = world.run()
    assert bad.exists() and not good.exists()
    assert res.held == {LIST_FAILED: 1} and world.state("bad/a.bin") == "uploaded"


def test_every_row_is_committed_before_its_file_is_removed(world, tmp_path):
    world.file("a.bin", b"1")
    seen = []

    def probe(path, dev, ino, fresh):  # called before the removal (at the check and once quarantined): read with another connection
        with Store(tmp_path / "state.db", readonly=True) as other:
            seen.append(other.get("a.bin").state)
        return False

    world.cleaner.is_being_written = probe
    world.run()
    assert seen == ["uploaded", "uploaded"] and world.state("a.bin") == "deleted"


def test_a_crash_between_delete_and_mark_is_repaired_by_the_next_pass(world):
    p = world.file("a.bin", b"1")
    p.unlink()  # as if the last pass died right after unlink
    res = world.run()
    assert res.forgotten == 1 and world.state("a.bin") == "deleted" and res.freed_files == 0


def test_dry_run_deletes_nothing_and_says_what_it_would_do(world, caplog):
    world.settings = CleanupSettings(delete_after=DAY, dry_run=True)
    p = world.file("cam/a.mp4", b"abc")
    with caplog.at_level(logging.INFO, logger="s3_uploader.cleanup"):
        res = world.run()
    assert p.exists() and world.state("cam/a.mp4") == "uploaded"
    assert (res.would_free_files, res.would_free_bytes, res.freed_files) == (1, 3, 0)
    assert "Would delete cam/a.mp4 (3 bytes; S3 has site/cam/a.mp4)" in caplog.text


def test_a_stop_request_ends_the_pass_before_it_touches_a_file(world):
    world.file("a.bin", b"1")
    world.cleaner.stop.set()
    res = world.run()
    assert res.examined == 0 and (world.root / "a.bin").exists()


# -- free space ----------------------------------------------------------------------------------------

def test_low_free_space_deletes_the_oldest_proven_files_first_until_the_floor_is_met(world):
    world.settings = CleanupSettings(min_free_space=FreeSpace(bytes=600))
    world.capacity = 1000
    world.file("new.bin", b"n" * 200, mtime=T0 - 100)
    world.file("oldest.bin", b"o" * 200, mtime=T0 - 300)
    world.file("older.bin", b"d" * 200, mtime=T0 - 200)
    world.file("waiting.bin", b"w" * 200, upload=False, mtime=T0 - 900)  # not in S3: never for space
    world.clock.t = T0
    res = world.run(T0)  # 200 free < 600: two files must go
    assert res.mode == "space" and res.freed_files == 2
    assert sorted(p.name for p in world.root.iterdir()) == ["new.bin", "waiting.bin"]
    assert not res.disk_full_of_unuploaded


def test_a_disk_full_of_files_not_in_s3_is_reported_and_none_of_them_is_deleted(world, caplog):
    world.settings = CleanupSettings(min_free_space=FreeSpace(percent=50))
    world.capacity = 1000
    world.file("up.bin", b"u" * 100)
    for i in range(6):
        world.file(f"wait{i}.bin", b"w" * 100, upload=False)
    with caplog.at_level(logging.ERROR, logger="s3_uploader.cleanup"):
        res = world.run(T0)
    assert res.freed_files == 1 and res.disk_full_of_unuploaded and res.waiting_files == 6
    assert len(list(world.root.iterdir())) == 6
    assert "Disk space low" in caplog.text and "6 file(s) not yet in S3" in caplog.text
    lines = "\n".join(cleanup_lines(cleanup_status(world.store)))
    assert "WARNING: free space" in lines and "6 file(s) are waiting for upload" in lines


def test_dry_run_under_low_space_stops_where_the_floor_would_be_met(world):
    world.settings = CleanupSettings(min_free_space=FreeSpace(bytes=350), dry_run=True)
    world.capacity = 1000
    for i in range(4):
        world.file(f"f{i}.bin", b"x" * 200, mtime=T0 - 100 + i)
    res = world.run(T0)  # 200 free: 150 short, one file would do
    assert (res.would_free_files, res.freed_files) == (1, 0)
    assert len(list(world.root.iterdir())) == 4


# -- archive -------------------------------------------------------------------------------------------

def test_archive_moves_files_keeping_their_relative_path(world, tmp_path):
    arch = tmp_path / "archive"
    world.settings = CleanupSettings(delete_after=DAY, action="archive", archive_directory=str(arch))
    world.file("cam1/2026/a.mp4", b"footage")
    res = world.run()
    assert (arch / "cam1" / "2026" / "a.mp4").read_bytes() == b"footage"
    assert res.freed_files == 1 and world.state("cam1/2026/a.mp4") == "archived"
    assert list(world.root.iterdir()) == []


def test_archive_never_replaces_a_different_file_and_finishes_an_interrupted_move(world, tmp_path):
    arch = tmp_path / "archive"
    world.settings = CleanupSettings(delete_after=DAY, action="archive", archive_directory=str(arch))
    world.file("a.mp4", b"new")
    b = world.file("b.mp4", b"same")
    arch.mkdir()
    (arch / "a.mp4").write_bytes(b"old footage")
    os.link(b, arch / "b.mp4")  # as if the last pass linked it and stopped before the unlink
    res = world.run()
    assert (arch / "a.mp4").read_bytes() == b"old footage" and (world.root / "a.mp4").read_bytes() == b"new"
    assert res.held == {ARCHIVE_EXISTS: 1}
    assert (arch / "b.mp4").read_bytes() == b"same" and not b.exists()


def test_archive_copies_across_filesystems_when_a_link_is_refused(world, tmp_path, monkeypatch):
    arch = tmp_path / "archive"
    world.settings = CleanupSettings(delete_after=DAY, action="archive", archive_directory=str(arch))
    p = world.file("x/a.mp4", b"footage")
    real_link = os.link
    refused = []

    def link(src, dst, *a, **kw):
        refused.append(dst)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", link)
    world.run()
    monkeypatch.setattr(os, "link", real_link)
    assert refused, "the archive must have tried a hard link first"
    assert (arch / "x" / "a.mp4").read_bytes() == b"footage" and not p.exists()
    assert sorted(q.name for q in (arch / "x").iterdir()) == ["a.mp4"]
    assert world.state("x/a.mp4") == "archived"


# -- the race between the check and the act (issue 11, item 3) -------------------------------------------

def quarantined(folder: Path) -> List[Path]:
    return sorted(q for q in folder.iterdir() if q.name.startswith(QUARANTINE_PREFIX))


def test_a_folder_swapped_for_a_symlink_between_check_and_delete_leads_nothing_outside_the_tree(world, tmp_path):
    p = world.file("cam/a.txt", b"abc")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.txt").write_bytes(b"abc")  # same name, same bytes: only the tree decides

    def swap(moment, rel):
        if moment == "act":  # checked, nothing done yet: the folder is moved aside, a link put in
            (world.root / "cam").rename(world.root / "cam.moved")
            (world.root / "cam").symlink_to(outside, target_is_directory=True)

    world.cleaner.at = swap
    res = world.run()
    assert (outside / "a.txt").read_bytes() == b"abc", "a file outside the watched tree was deleted"
    assert (world.root / "cam.moved" / "a.txt").read_bytes() == b"abc"
    assert not p.parent.is_dir() or p.parent.is_symlink()
    assert res.held == {OUTSIDE_TREE: 1} and res.freed_files == 0
    assert world.state("cam/a.txt") == "uploaded"
    assert quarantined(outside) == [] and quarantined(world.root / "cam.moved") == []


def test_a_file_replaced_by_rename_between_check_and_delete_keeps_its_new_version_and_queues_it(world):
    p = world.file("cam/a.log", b"version 1")

    def writer(moment, rel):
        if moment == "act":  # a writer's atomic replace (write a temporary file, rename it over)
            tmp = p.with_name(".a.log.tmp")
            tmp.write_bytes(b"version 2, never uploaded")
            os.replace(tmp, p)

    world.cleaner.at = writer
    res = world.run()
    assert p.read_bytes() == b"version 2, never uploaded"
    assert quarantined(p.parent) == []
    row = world.store.get("cam/a.log")
    assert (row.state, row.size, row.inode) == ("pending", 25, os.lstat(p).st_ino)  # queued: it will be uploaded
    assert world.requeued == ["cam/a.log"] and res.freed_files == 0 and res.held == {FILE_MODIFIED: 1}


def test_a_file_replaced_by_rename_after_the_quarantine_rename_is_kept_and_only_the_proven_one_goes(world):
    p = world.file("a.log", b"version 1")

    def writer(moment, rel):
        if moment == "quarantined":  # the name is free now: the writer's new file takes it
            tmp = p.with_name(".a.log.tmp")
            tmp.write_bytes(b"version 2")
            os.replace(tmp, p)

    world.cleaner.at = writer
    res = world.run()
    assert p.read_bytes() == b"version 2" and quarantined(world.root) == []
    assert res.freed_files == 1 and world.state("a.log") == "deleted"
    assert world.remote.objects["site/a.log"][0] == b"version 1"  # what was deleted is what S3 has


def test_a_new_file_recorded_at_the_name_while_the_quarantined_one_is_proven_keeps_both_and_its_row(world):
    """Found by review: while the quarantined file was hashed, a recorder wrote a new file at the
    freed name and the daemon recorded it (and could send it) to the same key; the pass then
    unlinked the old file and marked the new file's row deleted (the model-based test found the same
    moment stopping the pass with an IllegalTransition). The unlink now happens only if the row
    still records what was proven, under the store's lock; the pass goes on to the next file."""
    p = world.file("a.log", b"version 1")
    q = world.file("b.log", b"other")

    def recorder(moment, rel):
        if moment == "quarantined" and rel == "a.log":
            p.write_bytes(b"version 2, a new file")
            st = os.lstat(p)
            world.store.discover("a.log", "site/a.log", st.st_size, st.st_mtime_ns, st.st_ino)

    world.cleaner.at = recorder
    res = world.run()
    assert p.read_bytes() == b"version 2, a new file"
    assert [q.read_bytes() for q in quarantined(world.root)] == [b"version 1"]  # kept, hidden, said
    assert world.state("a.log") == "pending"  # the new file's row, never marked removed
    assert not q.exists() and res.freed_files == 1, "the pass went on to the next file"


def test_a_gone_file_whose_path_the_daemon_takes_up_again_during_the_pass_keeps_its_new_row(world, monkeypatch):
    # found by the model-based test: the file is gone and S3 lost its object, so the pass forgets its
    # row; meanwhile a new file at the path was found and its upload started. The pass moved that
    # row (uploading -> pending) and deleted it, and the upload's outcome then had no row to go to
    # (IllegalTransition in the upload worker: before containment, the daemon stopped)
    p = world.file("a.log", b"version 1")
    p.unlink()
    world.remote.objects.clear()
    real = cleanup_mod.decide

    def daemon_takes_it_up(record, *a, **kw):
        d = real(record, *a, **kw)
        p.write_bytes(b"version 2!")
        st = os.lstat(p)
        world.store.discover("a.log", "site/a.log", st.st_size, st.st_mtime_ns, st.st_ino)
        world.store.start_upload("a.log", st.st_size, st.st_mtime_ns, st.st_ino)
        return d

    monkeypatch.setattr(cleanup_mod, "decide", daemon_takes_it_up)
    res = world.run()
    assert world.state("a.log") == "uploading", "the new file's upload keeps its row"
    assert res.forgotten == 0 and p.read_bytes() == b"version 2!"


def test_a_file_rewritten_in_place_with_its_size_and_mtime_restored_is_kept_because_its_md5_differs(world):
    p = world.file("a.bin", b"AAAA")
    st = os.lstat(p)
    with open(p, "r+b") as f:  # same inode, same size; mtime put back as a copy tool would
        f.write(b"BBBB")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = os.lstat(p)
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    res = world.run()
    assert p.read_bytes() == b"BBBB"
    assert res.held == {CONTENT_DIFFERS: 1} and world.requeued == ["a.bin"]
    assert world.state("a.bin") == "pending"


def test_a_crash_between_the_quarantine_rename_and_the_unlink_is_finished_by_the_next_pass(world, tmp_path):
    p = world.file("cam/a.bin", b"abc")

    class Crash(BaseException):  # a crash, not an error: nothing in the pass may catch it
        pass

    def crash(moment, rel):
        if moment == "quarantined":
            raise Crash()

    world.cleaner.at = crash
    with pytest.raises(Crash):
        world.run()
    assert not p.exists() and len(quarantined(p.parent)) == 1  # hidden, not lost
    world.store.commit()
    fresh = Cleaner(world.root, world.store, world.remote, lambda: world.settings)  # as after a restart
    res = fresh.run_pass(T0 + DAY)
    assert not p.parent.exists(), "the file was put back, proven, deleted, and its emptied folder removed"
    assert res.freed_files == 1 and world.state("cam/a.bin") == "deleted"


def test_a_quarantined_file_whose_name_was_taken_is_finished_and_the_new_file_at_the_name_is_kept(world, tmp_path):
    p = world.file("cam/a.bin", b"abc")
    world.clock.t = T0 + 5
    world.file("cam/b.bin", b"xyz")

    class Crash(BaseException):  # a crash, not an error: nothing in the pass may catch it
        pass

    def crash(moment, rel):
        if moment == "quarantined" and rel == "cam/a.bin":
            p.write_bytes(b"a new file at the same name")
            raise Crash()

    world.cleaner.at = crash
    with pytest.raises(Crash):
        world.run()
    (q,) = quarantined(p.parent)
    # the row still records the quarantined file as uploaded (the pass had proven it): finished;
    # the new file at the name is never touched
    world.cleaner.at = lambda moment, rel: None
    res = world.run(T0 + DAY)
    assert not q.exists() and p.read_bytes() == b"a new file at the same name"
    assert world.state("cam/a.bin") == "deleted" and world.state("cam/b.bin") == "uploaded"
    assert res.freed_files == 0


def test_a_quarantined_file_that_no_row_describes_is_kept_and_never_uploaded_twice(world, caplog):
    p = world.file("cam/a.bin", b"abc")

    def writer(moment, rel):
        if moment == "quarantined":
            with open(q_of(p), "ab") as f:  # the quarantined file changes: it is not the proven one
                f.write(b"more")
            p.write_bytes(b"and a new file takes the name")

    world.cleaner.at = writer
    with caplog.at_level(logging.WARNING, logger="s3_uploader.cleanup"):
        res = world.run()
    (q,) = quarantined(p.parent)
    assert q.read_bytes() == b"abcmore" and p.read_bytes() == b"and a new file takes the name"
    assert res.held == {FILE_MODIFIED: 1} and "kept cam/a.bin as" in caplog.text
    from s3_uploader.keys import Filters
    from s3_uploader.scanner import Scanner
    scanner = Scanner(world.root, Filters(skip_hidden=False))
    assert [f.rel for _, files in scanner.walk() for f in files] == ["cam/a.bin"]
    assert scanner.stat_one(f"cam/{q.name}") is None


def q_of(p: Path) -> Path:
    (q,) = quarantined(p.parent)
    return q


def test_archive_to_another_filesystem_copies_verifies_and_keeps_the_mtime(world, tmpfs):
    arch = tmpfs / "archive"
    world.settings = CleanupSettings(delete_after=DAY, action="archive", archive_directory=str(arch))
    p = world.file("cam/2026/a.mp4", b"footage" * 1000, mtime=T0 - 50)
    res = world.run()
    dest = arch / "cam" / "2026" / "a.mp4"
    assert res.freed_files == 1 and not p.exists() and world.state("cam/2026/a.mp4") == "archived"
    assert dest.read_bytes() == b"footage" * 1000 and os.lstat(dest).st_mtime == T0 - 50
    assert sorted(q.name for q in dest.parent.iterdir()) == ["a.mp4"]


def test_archive_to_another_filesystem_keeps_a_source_that_changed_during_the_copy(world, tmpfs):
    arch = tmpfs / "archive"
    world.settings = CleanupSettings(delete_after=DAY, action="archive", archive_directory=str(arch))
    p = world.file("cam/a.log", b"line 1\n")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)  # a writer that the (injected) probe does not see

    def writer(moment, rel):
        if moment == "copied":  # the copy is made; the writer appends before the source is removed
            os.write(fd, b"line 2\n")

    world.cleaner.at = writer
    try:
        res = world.run()
    finally:
        os.close(fd)
    assert p.read_bytes() == b"line 1\nline 2\n" and quarantined(p.parent) == []
    assert not (arch / "cam" / "a.log").exists() and list((arch / "cam").iterdir()) == []
    assert res.freed_files == 0 and world.state("cam/a.log") == "pending" and world.requeued == ["cam/a.log"]


def test_status_lines_show_freed_totals_and_held_back_reasons(world):
    world.file("a.bin", b"12345")
    k = world.file("keep.bin", b"1")
    k.write_bytes(b"12")
    world.run()
    lines = cleanup_lines(cleanup_status(world.store))
    assert lines[0].startswith("Cleanup: 1 file(s), 5 B freed so far; 1 queued to upload again")
    assert any("held back, file modified: 1" in ln for ln in lines)
    assert any("keep.bin: file modified" in ln for ln in lines)


def test_one_pass_runs_at_a_time(world):
    for i in range(20):
        world.file(f"f{i}.bin", b"x")
    results = []
    threads = [threading.Thread(target=lambda: results.append(world.run())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.freed_files for r in results) == 20
    assert sum(r.forgotten for r in results) == 0


# -- in the daemon -------------------------------------------------------------------------------------

def test_the_daemons_cleanup_thread_deletes_due_files_and_is_joined_at_shutdown(tmp_path):
    from helpers import wait_for

    from s3_uploader.daemon import Daemon

    inbox = tmp_path / "inbox"
    (inbox / "cam").mkdir(parents=True)
    (inbox / "cam" / "a.bin").write_bytes(b"abc")
    cfg = parse_config(f"[watch]\ndirectory_to_watch = {inbox}\nstable_seconds = 0\nstable_checks = 1\n"
                       f"use_events = false\n[s3]\nbucket = b\n[cleanup]\ndelete_after = 0.2s\n"
                       f"cleanup_interval = 1s\n[daemon]\ndb_path = {tmp_path / 'state.db'}\n")
    remote = MemoryRemote()
    d = Daemon(cfg, remote=remote)
    t = threading.Thread(target=d.run, name="test-daemon")
    t.start()
    try:
        wait_for(lambda: not (inbox / "cam").exists(), timeout=20, what="the cleanup thread to delete cam/a.bin")
        assert inbox.is_dir() and "cam/a.bin" in remote.objects
        wait_for(lambda: d.stats.cleanup_files_freed == 1, timeout=5, what="the freed counter")
        assert d.stats.cleanup_bytes_freed == 3
    finally:
        d.request_stop()
        t.join(30)
    assert not t.is_alive()
    assert not any(th.name == "cleanup" and th.is_alive() for th in threading.enumerate())

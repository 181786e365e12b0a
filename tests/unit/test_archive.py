"""cleanup.archive: a proven file put in the archive without replacing anything; the caller removes it."""
from __future__ import annotations

import hashlib
import os
import threading

import pytest

from s3_uploader import tree
from s3_uploader.cleanup.archive import archive
from s3_uploader.cleanup.decision import ARCHIVE_EXISTS, CleanupSettings, Keep
from s3_uploader.store import Record


def quarantined(root, rel: str, data: bytes):
    """``rel`` written under ``root`` and renamed to its quarantine name: (folder, qname, fd, stat, row)."""
    path = root.joinpath(*rel.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    dirs, name = tree.split_rel(rel)
    folder = tree.open_folder(str(root), dirs)
    qname = tree.quarantine_name(name)
    folder.rename(name, qname)
    fd = folder.open(qname, os.O_RDONLY)
    st = os.fstat(fd)
    row = Record(rel, rel, "uploaded", st.st_size, st.st_mtime_ns, st.st_ino, md5=hashlib.md5(data).hexdigest())
    return folder, qname, fd, st, row


def test_archive_puts_the_file_at_its_relative_path_and_leaves_the_source_to_the_caller(tmp_path):
    folder, qname, fd, st, row = quarantined(tmp_path / "tree", "cam/a.mp4", b"abc")
    s = CleanupSettings(action="archive", archive_directory=str(tmp_path / "archive"))
    moments = []
    with folder:
        try:
            dest = archive(folder, qname, fd, st, row, s, threading.Event(), lambda m, rel: moments.append(m))
        finally:
            os.close(fd)
        assert dest == str(tmp_path / "archive" / "cam" / "a.mp4")
        assert (tmp_path / "archive" / "cam" / "a.mp4").read_bytes() == b"abc"
        assert folder.lstat(qname).st_ino == st.st_ino  # not removed: the caller does, once its row allows
    assert moments == []  # linked on one filesystem: no copy to look at


def test_archive_never_replaces_a_different_file_there(tmp_path):
    (tmp_path / "archive" / "cam").mkdir(parents=True)
    (tmp_path / "archive" / "cam" / "a.mp4").write_bytes(b"other")
    folder, qname, fd, st, row = quarantined(tmp_path / "tree", "cam/a.mp4", b"abc")
    s = CleanupSettings(action="archive", archive_directory=str(tmp_path / "archive"))
    with folder:
        try:
            with pytest.raises(Keep) as kept:
                archive(folder, qname, fd, st, row, s, threading.Event(), lambda m, rel: None)
        finally:
            os.close(fd)
        assert folder.lstat(qname).st_ino == st.st_ino
    assert kept.value.reason == ARCHIVE_EXISTS
    assert (tmp_path / "archive" / "cam" / "a.mp4").read_bytes() == b"other"

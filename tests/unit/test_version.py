"""The shared version and place rules (version.py): one answer to "changed since" for every stage."""

import os

import pytest

from s3_uploader.version import Signature, is_inside, is_new_version, safe_rel, settled, signature_of


def test_signature_is_size_mtime_inode_and_equals_the_plain_tuple(tmp_path):
    p = tmp_path / "a"
    p.write_bytes(b"abc")
    st = os.stat(p)
    assert signature_of(st) == (3, st.st_mtime_ns, st.st_ino)
    assert signature_of(st) == Signature(3, st.st_mtime_ns, st.st_ino)


@pytest.mark.parametrize("state,same,expected", [
    ("uploaded", True, True), ("failed", True, True), ("parked", True, True),
    ("uploaded", False, False), ("failed", False, False),
    ("pending", True, False), ("uploading", True, False),  # on its way: its job is built (again)
    ("deleted", True, False), ("archived", True, False),  # a new file at a removed row's path
    (None, True, False),
])
def test_settled(state, same, expected):
    recorded = (1, 2, 3)
    seen = recorded if same else (1, 2, 4)
    assert settled(state, recorded if state else None, seen) is expected


@pytest.mark.parametrize("state,same,expected", [
    ("uploaded", True, False), ("uploaded", False, True), ("pending", False, True),
    ("deleted", True, True), ("archived", True, True),
])
def test_is_new_version(state, same, expected):
    assert is_new_version(state, (1, 2, 3), (1, 2, 3) if same else (9, 2, 3)) is expected


@pytest.mark.parametrize("rel,ok", [
    ("a", True), ("a/b.txt", True), ("a/.hidden", True), ("..x", True),
    ("", False), ("..", False), ("a/../b", False), ("./a", False), ("a//b", False), ("/etc/passwd", False),
    ("a/", False),
])
def test_safe_rel(rel, ok):
    assert safe_rel(rel) is ok


def test_is_inside_needs_a_separator_not_a_prefix():
    assert is_inside("/data/new", "/data/new")
    assert is_inside("/data/new/a/b", "/data/new")
    assert is_inside("/data/new/a", "/data/new/")
    assert not is_inside("/data/newer/a", "/data/new")
    assert not is_inside("/data", "/data/new")

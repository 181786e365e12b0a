"""Which paths count and which key each gets."""
from __future__ import annotations

import os
import time
from urllib.parse import unquote_to_bytes

from s3_uploader.keys import Filters, KeyMaker, escape_name, key_folder, key_problem


def test_star_crosses_folders_and_exclude_wins():
    f = Filters(include=("*.mp4", "*.jpg"), exclude=("tmp/*",))
    assert f.file_allowed("a.mp4") and f.file_allowed("cam1/2026/01/x.mp4")
    assert not f.file_allowed("cam1/x.dat")
    assert not f.file_allowed("tmp/deep/x.mp4")


def test_empty_include_means_everything_and_hidden_is_skipped_at_any_depth():
    f = Filters()
    assert f.file_allowed("x.bin") and f.file_allowed("a/b/c")
    assert not f.file_allowed(".x") and not f.file_allowed("a/.git/config")
    assert not f.dir_allowed(".cache") and f.dir_allowed("cache")
    g = Filters(skip_hidden=False)
    assert g.file_allowed("a/.x") and g.dir_allowed(".cache")


def test_key_is_prefix_slash_relative_path():
    assert KeyMaker("").key_for("a/b.txt", 0) == "a/b.txt"
    assert KeyMaker("site1").key_for("a/b.txt", 0) == "site1/a/b.txt"
    assert KeyMaker("/site1/x/").key_for("b.txt", 0) == "site1/x/b.txt"


def test_prefix_placeholders_use_hostname_and_the_files_mtime():
    mtime = time.mktime((2026, 3, 7, 12, 0, 0, 0, 0, -1))
    km = KeyMaker("{hostname}/{yyyy}/{mm}/{dd}", hostname="rec1")
    assert km.key_for("cam/x.mp4", mtime) == "rec1/2026/03/07/cam/x.mp4"
    assert km.static_prefix == ""
    assert KeyMaker("fleet/{hostname}").static_prefix == "fleet/"


def test_names_that_are_not_utf8_get_a_reversible_escape():
    raw = b"caf\xe9 100%.txt"
    rel = os.fsdecode(raw)
    escaped = escape_name(rel)
    assert escaped == "caf%E9 100%25.txt"
    assert unquote_to_bytes(escaped) == raw
    assert escape_name("café 100%.txt") == "café 100%.txt"  # valid UTF-8 is untouched


def test_keys_over_1024_bytes_are_refused_with_the_reason():
    assert key_problem("a" * 1024) is None
    assert "1025 bytes" in key_problem("a" * 1025)
    assert "2048 bytes" in key_problem("é" * 1024)


def test_key_folder():
    assert key_folder("a/b/c.txt") == "a/b/" and key_folder("c.txt") == ""

"""Which paths count and which key each gets."""
from __future__ import annotations

import os
import time
from urllib.parse import unquote_to_bytes

from hypothesis import example, given, settings
from hypothesis import strategies as st

from s3_uploader.keys import Filters, KeyMaker, escape_name, key_folder, key_problem, unescape_name


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
    assert escaped == "caf%E9 100%.txt"  # the '%' is not followed by two hex digits: it stays
    assert unquote_to_bytes(escaped) == raw and unescape_name(escaped) == rel
    assert escape_name("café 100%.txt") == "café 100%.txt"  # valid UTF-8 is untouched


def test_the_two_names_that_used_to_share_a_key_get_two_keys():
    utf8, latin = "a%FF.dat", os.fsdecode(b"a\xff.dat")
    assert escape_name(utf8) == "a%25FF.dat" and escape_name(latin) == "a%FF.dat"
    assert unescape_name("a%25FF.dat") == utf8 and unescape_name("a%FF.dat") == latin


def test_a_backslash_and_control_characters_are_escaped_and_ordinary_names_are_not():
    assert escape_name("d/x\\y.txt") == "d/x%5Cy.txt"  # not the key of d/x/y.txt on SeaweedFS
    assert escape_name("tab\there\nnul\x00del\x7f") == "tab%09here%0Anul%00del%7F"
    for name in ("a/b c.txt", " lead/trail .txt", "100%.txt", "%zz%4", "Ünïcødé/日本語.mp4", "e\u0301.txt",
                 "[x]{y}(z)!@#$^&*+=~`'\";:,<>?|.txt"):
        assert escape_name(name) == name  # existing users' keys do not move


# A relative path: '/'-separated segments that are neither empty, '.' nor '..', from file-system bytes
# (any byte but '/' and NUL, so invalid UTF-8 comes in as surrogate escapes) or from text that leans
# towards the characters the mapping is about.
_TRICKY = st.sampled_from(list("%\\\x01\x1f\x7f AaFf09é/") + ["\udcff", "\udc80", "%2", "%25", "%FF"])
_segment_bytes = st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")) \
    .filter(lambda b: b not in (b".", b".."))
_segment_text = st.lists(st.one_of(_TRICKY, st.characters(blacklist_categories=("Cs",))), min_size=1, max_size=10) \
    .map("".join).map(lambda t: t.replace("/", "_")).filter(lambda t: t not in (".", ".."))
_segment = st.one_of(_segment_bytes.map(os.fsdecode), _segment_text)
_paths = st.lists(_segment, min_size=1, max_size=4).map("/".join)


@settings(max_examples=1500, deadline=None)
@given(_paths)
@example("a%FF.dat")
@example(os.fsdecode(b"a\xff.dat"))
@example("%" + os.fsdecode(b"\xff"))
def test_decoding_a_paths_key_name_gives_back_the_exact_path(rel):
    name = escape_name(rel)
    assert unescape_name(name) == rel
    assert os.fsencode(unescape_name(name)) == os.fsencode(rel)  # the very bytes
    name.encode("utf-8")  # a key is UTF-8 text
    assert not any(c in name for c in "\\\x00\x1f\x7f") and name.count("/") == rel.count("/")


@settings(max_examples=1500, deadline=None)
@given(_paths, _paths)
@example("a%FF.dat", os.fsdecode(b"a\xff.dat"))
@example("d/x\\y.txt", "d/x/y.txt")
@example("%%41", "%A")
def test_two_different_paths_never_get_the_same_key(a, b):
    if a != b:
        assert escape_name(a) != escape_name(b)
        km = KeyMaker("{hostname}/{yyyy}", hostname="h")
        assert km.key_for(a, 0) != km.key_for(b, 0)


def test_keys_over_1024_bytes_are_refused_with_the_reason():
    assert key_problem("a" * 1024) is None
    assert "1025 bytes" in key_problem("a" * 1025)
    assert "2048 bytes" in key_problem("é" * 1024)


def test_key_folder():
    assert key_folder("a/b/c.txt") == "a/b/" and key_folder("c.txt") == ""

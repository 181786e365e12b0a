"""The declarative config table: parsing, units, every error at once, the example file."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from helpers import cli

from s3_uploader.config import (OPTIONS, SECTIONS, Config, ConfigError, FreeSpace, load_config, parse_config,
                                parse_duration, parse_schedule, parse_size, render_example)

MINIMAL = "[watch]\ndirectory_to_watch = /data\n[s3]\nbucket = b-1\n"


@pytest.mark.parametrize("text,seconds", [("90", 90), ("30s", 30), ("5m", 300), ("2h", 7200), ("7d", 604800),
                                          ("1.5m", 90), ("0", 0), (" 10 s ", 10)])
def test_durations_accept_seconds_and_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text,size", [("1024", 1024), ("8MiB", 8 * 2**20), ("64MB", 64 * 10**6), ("1GiB", 2**30),
                                       ("512KiB", 512 * 1024), ("2kb", 2000)])
def test_sizes_accept_bytes_and_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["5x", "minutes", "-1", "", "1.2.3"])
def test_bad_durations_raise_with_what_was_expected(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_minimal_config_gets_documented_defaults():
    cfg = parse_config(MINIMAL)
    assert cfg.watch.directory_to_watch == "/data"
    assert cfg.watch.stable_seconds == 10.0 and cfg.watch.stable_checks == 2
    assert cfg.watch.skip_hidden is True and cfg.watch.follow_symlinks is False
    assert cfg.watch.include == () and cfg.upload.multipart_threshold == 200 * 2**20
    assert cfg.cleanup.delete_after == 0.0 and not cfg.cleanup.min_free_space
    assert cfg.s3.prefix == "" and cfg.daemon.log_file == ""


def test_every_error_is_reported_at_once_naming_section_key_value_and_expectation():
    text = ("[watch]\nstable_seconds = soon\nstable_checks = 0\n"
            "[s3]\nstorage_class = SUPERCOLD\n"
            "[upload]\nmultipart_chunksize = 1KiB\nupload_workers = many\n"
            "[daemon]\nlog_level = LOUD\n")
    with pytest.raises(ConfigError) as ei:
        parse_config(text)
    errors = ei.value.errors
    joined = "\n".join(errors)
    assert "[watch] directory_to_watch: is required" in joined
    assert "[s3] bucket: is required" in joined
    assert "[watch] stable_seconds = 'soon': expected a duration" in joined
    assert "[watch] stable_checks = '0': expected a whole number, 1 to 1000" in joined
    assert "[s3] storage_class = 'SUPERCOLD': expected one of" in joined
    assert "[upload] multipart_chunksize = '1KiB': expected a size of at least 5242880 bytes" in joined
    assert "[upload] upload_workers = 'many': expected a whole number" in joined
    assert "[daemon] log_level = 'LOUD': expected one of" in joined
    assert len(errors) == 8


def test_unknown_keys_and_sections_are_errors_with_a_suggestion():
    with pytest.raises(ConfigError) as ei:
        parse_config(MINIMAL + "[uplaod]\nx = 1\n[daemon]\nlog_levle = INFO\n")
    joined = "\n".join(ei.value.errors)
    assert "[uplaod]: unknown section" in joined
    assert "[daemon] log_levle: unknown key (did you mean 'log_level'?)" in joined


def test_include_exclude_are_comma_separated_wildcards():
    cfg = parse_config(MINIMAL.replace("[s3]", "include = *.dat, *.mp4 ,*.jpg\nexclude = tmp/*\n[s3]"))
    assert cfg.watch.include == ("*.dat", "*.mp4", "*.jpg")
    assert cfg.watch.exclude == ("tmp/*",)


def test_zero_stability_is_valid_for_batch_use():
    cfg = parse_config(MINIMAL.replace("[s3]", "stable_seconds = 0\nstable_checks = 1\n[s3]"))
    assert cfg.watch.stable_seconds == 0 and cfg.watch.stable_checks == 1


def test_archive_directory_inside_the_watched_tree_is_rejected(tmp_path):
    text = f"[watch]\ndirectory_to_watch = {tmp_path}\n[s3]\nbucket = bkt\n[cleanup]\ncleanup_action = archive\n" \
           f"archive_directory = {tmp_path}/archive\n"
    with pytest.raises(ConfigError, match=r"\[cleanup\] archive_directory .*outside directory_to_watch"):
        parse_config(text)


def test_free_space_accepts_bytes_or_percent():
    cfg = parse_config(MINIMAL + "[cleanup]\nmin_free_space = 10%\n")
    assert cfg.cleanup.min_free_space == FreeSpace(percent=10.0)
    assert cfg.cleanup.min_free_space.floor_bytes(1000) == 100
    cfg = parse_config(MINIMAL + "[cleanup]\nmin_free_space = 20GiB\n")
    assert cfg.cleanup.min_free_space.floor_bytes(10**15) == 20 * 2**30


def test_bandwidth_schedule_parses_rclone_style_timetable():
    entries = parse_schedule("19:00,off 08:00,512KiB")
    assert [(e.minute_of_day, e.limit) for e in entries] == [(480, 512 * 1024), (1140, None)]
    with pytest.raises(ValueError, match="timetable"):
        parse_schedule("8am,1MiB")


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path):
    p = tmp_path / "conf" / "config.ini"
    p.parent.mkdir()
    p.write_text("[watch]\ndirectory_to_watch = inbox\n[s3]\nbucket = bkt\n[daemon]\ndb_path = state/s.db\n")
    cfg = load_config(p)
    assert cfg.watch.directory_to_watch == str(p.parent / "inbox")
    assert cfg.daemon.db_path == str(p.parent / "state" / "s.db")


def test_a_missing_config_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.ini")


def test_example_file_documents_every_key_and_parses_back():
    text = render_example()
    for o in OPTIONS:
        assert f"{o.key} = " in text, o.key
    cfg = parse_config(text)  # the example is itself a valid config
    assert cfg.s3.bucket == "my-camera-archive"
    assert "*.dat, *.bvr, *.avi, *.mov, *.jpg, *.mp4" in text


def test_committed_example_file_matches_the_table():
    committed = Path(__file__).parents[2] / "config.example.ini"
    assert committed.read_text() == render_example(), "regenerate: s3-uploader example-config > config.example.ini"


def test_each_section_class_has_exactly_its_sections_keys_in_table_order_with_the_tables_types():
    # The classes give the type checker `cfg.s3.bucket: str`; the table drives parsing. This keeps them one.
    hints = typing.get_type_hints(Config)
    assert [name for name in hints if name in SECTIONS] == list(SECTIONS)
    cfg = parse_config(MINIMAL)
    for sec in SECTIONS:
        cls = hints[sec]
        assert type(getattr(cfg, sec)) is cls and dataclasses.is_dataclass(cls)
        rows = [o for o in OPTIONS if o.section == sec]
        assert [f.name for f in dataclasses.fields(cls)] == [o.key for o in rows], sec
        types = typing.get_type_hints(cls)
        for o in rows:
            assert types[o.key] == o.type.pytype, f"[{sec}] {o.key}: {types[o.key]} != {o.type.pytype}"
            value = getattr(getattr(cfg, sec), o.key)
            assert _is_a(value, o.type.pytype), f"[{sec}] {o.key} = {value!r} is not a {o.type.pytype}"


def _is_a(value, tp) -> bool:
    """isinstance for the few annotations the table uses: Literal, Optional, Tuple[X, ...], classes."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return value in args
    if origin is typing.Union:
        return any(_is_a(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        items = args[:1] * len(value) if args[-1] is ... else args
        return len(items) == len(value) and all(map(_is_a, value, items))
    return tp is type(None) and value is None or isinstance(value, tp) and not (tp is int and isinstance(value, bool))


def test_a_section_is_read_only_and_an_unknown_key_is_an_attribute_error():
    cfg = parse_config(MINIMAL)
    with pytest.raises(AttributeError):
        cfg.s3.bucket = "other"  # type: ignore[misc]  # the point of the test: frozen
    with pytest.raises(AttributeError):
        getattr(cfg.s3, "bukcet")


def test_restart_only_keys_are_marked():
    restart = {(o.section, o.key) for o in OPTIONS if not o.reloadable}
    for k in [("watch", "directory_to_watch"), ("s3", "bucket"), ("s3", "prefix"), ("s3", "endpoint_url"),
              ("upload", "upload_workers"), ("daemon", "db_path"), ("daemon", "log_file")]:
        assert k in restart
    for k in [("watch", "exclude"), ("watch", "stable_seconds"), ("cleanup", "delete_after"),
              ("upload", "max_bandwidth"), ("daemon", "log_level"), ("s3", "storage_class")]:
        assert k not in restart


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


def test_hooks_keys_are_checked_each_with_what_it_expects_and_default_to_off():
    with pytest.raises(ConfigError) as ei:
        parse_config(MINIMAL + "[hooks]\non_uploaded = notify 'unclosed\nwebhook_url = ftp://x/y\n"
                               "presign_ttl = 8d\nhook_max_attempts = 0\n")
    joined = "\n".join(ei.value.errors)
    assert "[hooks] on_uploaded = \"notify 'unclosed\": expected a command line split as a shell would" in joined
    assert "[hooks] webhook_url = 'ftp://x/y': expected an http:// or https:// URL" in joined
    assert "[hooks] presign_ttl = '8d': expected a duration of at most 7d" in joined
    assert "[hooks] hook_max_attempts = '0': expected a whole number, 1 or more" in joined
    assert len(ei.value.errors) == 4
    h = parse_config(MINIMAL).hooks
    assert (h.on_uploaded, h.webhook_url, h.presign_ttl, h.hook_timeout, h.hook_max_attempts) == ("", "", 0.0, 30.0, 20)
    h = parse_config(MINIMAL + "[hooks]\non_parked = /bin/sh -c 'echo \"$S3U_REL\"'\npresign_ttl = 7d\n").hooks
    assert (h.on_parked, h.presign_ttl) == ("/bin/sh -c 'echo \"$S3U_REL\"'", 7 * 86400.0)

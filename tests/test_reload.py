"""Hot reload: edits to config.ini change a running daemon's behaviour, or are refused whole."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from helpers import list_keys, make_files

from s3_uploader.config import ConfigError, parse_config
from s3_uploader.reload import Reloader, merge

BASE = """
[watch]
directory_to_watch = /data/in
exclude = *.tmp
[s3]
bucket = b1
[daemon]
log_level = INFO
"""


def cfg(text: str, source: Path = None):
    return parse_config(text, source)


def test_merge_takes_reloadable_values_and_keeps_restart_only_ones():
    running = cfg(BASE)
    loaded = cfg(BASE.replace("*.tmp", "*.part").replace("b1", "b2").replace("INFO", "DEBUG"))
    new, applied, kept = merge(running, loaded)
    assert {(o.section, o.key) for o in applied} == {("watch", "exclude"), ("daemon", "log_level")}
    assert [(o.section, o.key) for o in kept] == [("s3", "bucket")]
    assert new.watch.exclude == ("*.part",)
    assert new.daemon.log_level == "DEBUG"
    assert new.s3.bucket == "b1"  # the running value
    assert running.watch.exclude == ("*.tmp",), "the running config is never modified"


def test_merge_rejects_a_mix_that_breaks_a_rule_across_keys():
    running = cfg(BASE)
    # valid on its own (the file moves the directory too), but the directory change needs a
    # restart, and the new archive folder is inside the directory that keeps running
    loaded = cfg(BASE.replace("/data/in", "/data/new") + "[cleanup]\ncleanup_action = archive\n"
                 "archive_directory = /data/in/archive\n")
    with pytest.raises(ConfigError) as exc:
        merge(running, loaded)
    assert "archive_directory" in str(exc.value)
    assert "restart-only" in str(exc.value)


def test_the_reloader_waits_for_a_save_to_settle_then_applies_it(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text(BASE)
    running = [cfg(BASE, path)]
    applied = []
    r = Reloader(path, lambda: running[0], lambda new, changed: (running.__setitem__(0, new), applied.append(changed)))
    r.tick(0.0)
    r.tick(1.0)  # the first settled look re-reads the file: it matches, nothing to apply
    assert applied == []
    path.write_text(BASE.replace("*.tmp", "*.partial"))
    r.tick(2.0)  # changed since the last look: maybe half written, wait one more poll
    assert applied == []
    r.tick(2.5)  # not due yet
    r.tick(3.0)
    assert [[o.key for o in c] for c in applied] == [["exclude"]]
    assert running[0].watch.exclude == ("*.partial",)
    r.tick(4.0)
    r.tick(5.0)
    assert len(applied) == 1, "an unchanged file is not applied again"


def test_the_reloader_keeps_the_running_config_when_the_file_is_invalid(tmp_path, caplog):
    path = tmp_path / "config.ini"
    path.write_text(BASE)
    running = cfg(BASE, path)
    calls = []
    r = Reloader(path, lambda: running, lambda new, changed: calls.append(new))
    path.write_text(BASE + "[upload]\nmax_retries = -3\nretry_backoff_base = soon\n")
    r.request()
    r.tick(0.0)
    assert calls == []
    errors = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("Config error: ")]
    assert len(errors) == 2
    assert any("max_retries = '-3'" in e for e in errors)
    assert any("retry_backoff_base = 'soon'" in e for e in errors)


# -- the daemon, as users run it ------------------------------------------------------------------

def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in the config"
    path.write_text(text.replace(old, new))


@pytest.mark.integration
def test_editing_exclude_changes_what_a_running_daemon_uploads(workspace, s3_client):
    workspace.config(watch={"exclude": "*.tmp"})
    d = workspace.start()
    d.wait_log("Watching")
    make_files(workspace.inbox, [("cam/a.tmp", b"temporary"), ("cam/b.mp4", b"video")])
    d.wait_log(r"Successfully uploaded cam/b\.mp4")
    assert list_keys(s3_client, workspace.bucket) == {"cam/b.mp4": 5}
    edit(workspace.config_path, "exclude = *.tmp", "exclude = *.part")
    d.wait_log(r"Configuration reloaded; changed: \[watch\] exclude")
    d.wait_log(r"Successfully uploaded cam/a\.tmp")
    make_files(workspace.inbox, [("cam/c.part", b"partial")])
    make_files(workspace.inbox, [("cam/d.mp4", b"after")])
    d.wait_log(r"Successfully uploaded cam/d\.mp4")
    assert d.stop() == 0
    assert list_keys(s3_client, workspace.bucket) == {"cam/a.tmp": 9, "cam/b.mp4": 5, "cam/d.mp4": 5}


@pytest.mark.integration
def test_an_invalid_edit_keeps_the_old_config_and_logs_every_error(workspace, s3_client):
    workspace.config(watch={"exclude": "*.tmp"})
    d = workspace.start()
    d.wait_log("Watching")
    text = workspace.config_path.read_text()
    workspace.config_path.write_text(text.replace("exclude = *.tmp", "exclude = *.part")
                                     .replace("[upload]\n", "[upload]\nmax_retries = many\n")
                                     .replace("[cleanup]\n", "[cleanup]\ndelete_after = 3 fortnights\n"))
    out = d.wait_log("Config reload failed with 2 error\\(s\\); keeping the running configuration")
    d.wait_log(r"Config error: .*\[cleanup\] delete_after = '3 fortnights': expected a duration")
    assert "Config error: " in out and "[upload] max_retries = 'many'" in d.output()
    make_files(workspace.inbox, [("x.tmp", b"still excluded"), ("y.mp4", b"uploaded")])
    d.wait_log(r"Successfully uploaded y\.mp4")
    assert "Configuration reloaded" not in d.output()
    assert d.stop() == 0
    assert list_keys(s3_client, workspace.bucket) == {"y.mp4": 8}


@pytest.mark.integration
def test_a_restart_only_key_logs_a_warning_and_keeps_the_running_value(workspace, s3_client):
    workspace.config(s3={"prefix": "site1"})
    d = workspace.start()
    d.wait_log("Watching")
    text = workspace.config_path.read_text()
    # a restart-only key and a live one changed in the same save
    workspace.config_path.write_text(text.replace("prefix = site1", "prefix = site2")
                                     .replace("[cleanup]\n", "[cleanup]\ncleanup_interval = 2m\n"))
    d.wait_log(r"WARNING Config change to \[s3\] prefix requires a restart; keeping the running value")
    d.wait_log(r"Configuration reloaded; changed: \[cleanup\] cleanup_interval")
    make_files(workspace.inbox, [("after.txt", b"x")])
    d.wait_log(r"Successfully uploaded site1/after\.txt")
    assert d.stop() == 0
    assert list_keys(s3_client, workspace.bucket) == {"site1/after.txt": 1}


@pytest.mark.integration
def test_sighup_reloads_an_edit_the_file_poll_cannot_see(workspace, s3_client):
    workspace.config(watch={"exclude": "*.tmp"}, daemon={"log_level": "DEBUG"})
    d = workspace.start()
    d.wait_log("matches the running configuration")  # the poll has taken its first look
    # same size, same inode, mtime put back: only SIGHUP can tell the daemon
    st = os.stat(workspace.config_path)
    edit(workspace.config_path, "exclude = *.tmp", "exclude = *.tmq")
    os.utime(workspace.config_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    make_files(workspace.inbox, [("a.tmp", b"held back")])
    d.signal(signal.SIGHUP)
    d.wait_log("Reload requested: re-reading")
    d.wait_log(r"Configuration reloaded; changed: \[watch\] exclude")
    d.wait_log(r"Successfully uploaded a\.tmp")
    assert d.stop() == 0
    assert list_keys(s3_client, workspace.bucket) == {"a.tmp": 9}


@pytest.mark.integration
def test_a_reload_never_aborts_an_upload_in_flight_and_log_format_changes_live(workspace, s3_client):
    # 2 MiB at 128 KiB/s: the upload waits on the bandwidth limit for 15 s, long enough to edit
    workspace.config(upload={"max_bandwidth": "128KiB"})
    d = workspace.start()
    d.wait_log("Watching")
    make_files(workspace.inbox, [("big.bin", os.urandom(2 * 1024 * 1024))])
    d.wait_log(r"Uploading big\.bin attempt 1")
    edit(workspace.config_path, "max_bandwidth = 128KiB", "max_bandwidth = 0")
    with workspace.config_path.open("a") as f:
        f.write("log_format = json\n")  # the [daemon] section is last
    out = d.wait_log(r"Successfully uploaded big\.bin")
    assert d.stop() == 0
    assert out.index("Uploading big.bin attempt 1") < out.index("Configuration reloaded") \
        < out.index("Successfully uploaded big.bin")
    assert "max_bandwidth" in out and "log_format" in out
    tail = out[out.index("Configuration reloaded"):].splitlines()[1:]
    records = [json.loads(line) for line in tail if line.strip()]
    assert any(r["msg"].startswith("Successfully uploaded big.bin") for r in records)
    assert list_keys(s3_client, workspace.bucket) == {"big.bin": 2 * 1024 * 1024}
    assert "attempt 2" not in out

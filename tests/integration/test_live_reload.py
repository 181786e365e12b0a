"""Hot reload: edits to config.ini change a running daemon's behaviour, or are refused whole."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from helpers import list_keys, make_files


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in the config"
    path.write_text(text.replace(old, new))


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

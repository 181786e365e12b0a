"""Lost filesystem events are noticed: an inotify queue overflow and folders left unwatched by the
watch limit each trigger what makes up for them, one WARNING and a metric, instead of silence until
the next periodic rescan (watchdog drops both without a word to its handlers).

Both use the real kernel limits: the watch limit inside a user namespace of the daemon's own
(``unshare -U -r``: ``/proc/sys/user/max_inotify_watches`` there limits only that namespace), the
queue length through the global ``fs.inotify.max_queued_events``, which an inotify instance reads
once when it is created: it is lowered only until the daemon's watcher exists, then restored.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from helpers import DaemonProcess, cannot_run, cli, list_keys, make_files, wait_for
from prometheus_client.parser import text_string_to_metric_families

from s3_uploader.embedded import free_port
from s3_uploader.watcher import inotify_watches


QUEUED = "/proc/sys/fs/inotify/max_queued_events"


def _limited_watches(n: int):
    """A wrapper that runs a command in a new user namespace allowed ``n`` inotify watches."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        cannot_run("needs Linux and unshare(1) for a user namespace with its own inotify limit")
    probe = subprocess.run(["unshare", "-U", "-r", "sh", "-c", "echo 5 > /proc/sys/user/max_inotify_watches"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        cannot_run(f"cannot set an inotify limit in a user namespace: {probe.stderr.strip()}")
    return ["unshare", "-U", "-r", "sh", "-c", f'echo {n} > /proc/sys/user/max_inotify_watches && exec "$@"', "sh"]


def _scrape(port: int):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_folders_beyond_the_inotify_watch_limit_are_warned_about_with_the_sysctl_and_counted(workspace, s3_client):
    wrapper = _limited_watches(8)
    make_files(workspace.inbox, [(f"cam{i:02d}/clip.mp4", b"x" * 100) for i in range(20)])
    port = free_port()
    workspace.config(watch={"scan_interval": "1h"}, daemon={"metrics_address": f"127.0.0.1:{port}"})
    d = DaemonProcess(workspace.config_path, env=workspace.server.env(), wrapper=wrapper)
    workspace.daemons.append(d)
    out = d.wait_log(r"Filesystem events: \d+ of 21 folders could not be watched")
    line = next(x for x in out.splitlines() if "could not be watched" in x)
    assert "WARNING" in line and "fs.inotify.max_user_watches = 8" in line
    assert "sysctl -w fs.inotify.max_user_watches=" in line
    held = inotify_watches(str(d.pid))
    assert held is not None and held <= 8
    assert f"{21 - held} of 21 folders" in line
    m = wait_for(lambda: _scrape(port), what="a scrape")
    assert m[("s3_uploader_filesystem_events_lost_total", (("reason", "watch_limit"),))] == 1
    assert m[("s3_uploader_unwatched_folders", ())] == 21 - held
    # the files of every folder still went (the scan found them); said once, not at every scan
    wait_for(lambda: len(list_keys(s3_client, workspace.bucket)) == 20, what="all 20 clips")
    assert d.output().count("could not be watched") == 1
    assert d.stop() == 0
    # check says the same before anything runs
    r = subprocess.run([*wrapper, sys.executable, "-m", "s3_uploader", "check", "-c", str(workspace.config_path)],
                       capture_output=True, text=True, env={**os.environ, **workspace.server.env()}, timeout=60)
    assert "Filesystem events: WARNING: 21 folders to watch, over the inotify limit of 8" in r.stdout, r.stdout


def test_check_reports_the_folders_to_watch_against_the_inotify_limit(workspace):
    make_files(workspace.inbox, [(f"d{i}/f", b"1") for i in range(3)])
    workspace.config()
    r = cli("check", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Filesystem events: 4 folder(s) to watch, inotify allows" in r.stdout


def test_an_inotify_queue_overflow_triggers_a_rescan_a_warning_and_a_metric(workspace, s3_client):
    if os.geteuid() != 0 or not os.path.exists(QUEUED):
        cannot_run("lowering fs.inotify.max_queued_events needs root on Linux")
    port = free_port()
    workspace.config(watch={"scan_interval": "1h"}, daemon={"metrics_address": f"127.0.0.1:{port}"})
    before = Path(QUEUED).read_text()
    Path(QUEUED).write_text("16")
    try:
        d = workspace.start()
        # the watcher's inotify instance exists (its queue length is fixed from then on)
        d.wait_until(lambda: (inotify_watches(str(d.pid)) or 0) >= 1, what="the daemon's inotify watch")
    finally:
        Path(QUEUED).write_text(before)
    d.wait_log(r"Watching ")
    # a burst far beyond a 16-event queue, from another process: the kernel drops events
    n = 2000
    subprocess.run([sys.executable, "-c", "import sys\nfor i in range(int(sys.argv[2])):\n"
                    "    open(f'{sys.argv[1]}/f{i:05d}.log', 'w').write(str(i))", str(workspace.inbox), str(n)],
                   check=True, timeout=60)
    d.wait_log(r"Filesystem events were lost \(inotify queue overflow\); rescanning the whole tree now")
    # with scan_interval = 1h, only the rescan the overflow triggered can have found the rest
    d.wait_until(lambda: len(list_keys(s3_client, workspace.bucket)) == n, timeout=120, what=f"all {n} files")
    m = _scrape(port)
    assert m[("s3_uploader_filesystem_events_lost_total", (("reason", "overflow"),))] >= 1
    assert d.output().count("Filesystem events were lost") == 1  # at most one a minute
    assert d.stop() == 0

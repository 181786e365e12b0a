"""Files that never become stable (logs appended to for ever) must not hold every one of the
``max_pending_uploads`` tracker slots: other files would wait for ever while health stays green.

The daemon runs in-process (tests/inprocess.py) so the test can see its tracker and health.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

from helpers import get_bytes, list_keys, wait_for
from inprocess import running_daemon

from s3_uploader.health import health_problem, tracker_note


@contextmanager
def appending(paths: List[Path], every: float = 0.05) -> Iterator[threading.Event]:
    """Append a line to each of ``paths`` every ``every`` seconds (open, write, close: no writer
    stays open, so only the changing size keeps them unstable) until the event it yields is set or
    the block ends."""
    stop = threading.Event()

    def run() -> None:
        n = 0
        while not stop.wait(every):
            n += 1
            for p in paths:
                with open(p, "ab") as f:
                    f.write(b"line %d\n" % n)

    for p in paths:
        p.write_bytes(b"start\n")
    t = threading.Thread(target=run, name="appender")
    t.start()
    try:
        yield stop
    finally:
        stop.set()
        t.join(10)


def test_files_that_never_become_stable_give_way_so_other_files_go_and_health_says_so(workspace, s3_client,
                                                                                       aws_env):
    workspace.config(watch={"stable_seconds": "1s", "stable_checks": 2, "scan_interval": "1s"},
                     upload={"max_pending_uploads": 2})
    logs = [workspace.inbox / "app-1.log", workspace.inbox / "app-2.log"]
    with appending(logs) as stop_appending, running_daemon(workspace.config_path) as d:
        d.scheduler.unsettled_after = 3.0  # read at each check; none gives way in the first 60 s by default
        wait_for(lambda: all(p.name in d.scheduler.tracker for p in logs), what="both logs to hold the two slots")
        (workspace.inbox / "report.csv").write_bytes(b"a,b\n1,2\n")
        # before the fix the logs kept both slots for ever and report.csv waited with them
        wait_for(lambda: "report.csv" in list_keys(s3_client, workspace.bucket), timeout=30,
                 what="report.csv uploaded past the two unsettled logs")
        assert get_bytes(s3_client, workspace.bucket, "report.csv") == b"a,b\n1,2\n"
        # the logs are back in the tracker, unsettled: health says so, and is still healthy (a restart
        # would not make a log stop growing)
        note = wait_for(lambda: next((n for n in [tracker_note(d.scheduler)] if n and "2 of 2" in n), None), timeout=30,
                        what="health to note both unsettled files")
        assert "have not become stable for over 3s" in note, note
        assert health_problem(d) is None
        assert not any(p.name in list_keys(s3_client, workspace.bucket) for p in logs)
        # they gave way, they were not dropped: once the appends stop they go
        stop_appending.set()
        wait_for(lambda: all(p.name in list_keys(s3_client, workspace.bucket) for p in logs), timeout=30,
                 what="both logs uploaded once they stopped growing")
        assert get_bytes(s3_client, workspace.bucket, "app-1.log") == logs[0].read_bytes()

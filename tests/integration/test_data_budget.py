"""Data budgets against the real server: a daemon with ``max_bytes_per_day`` uploads up to the budget,
pauses (rows pending, status, /metrics, /healthz and the log say how much is used and when uploads
resume), keeps the count across a restart, and resumes by itself once its wall clock passes local
midnight. The daemon's wall clock is the seam: real time moved by an offset the test sets."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any, Dict

from helpers import cli, list_keys, make_files, wait_for
from inprocess import running_daemon

from s3_uploader.budget import periods_at
from s3_uploader.daemon import Daemon
from s3_uploader.embedded import free_port


class SpedWall:
    """``time.time()`` plus an offset the test moves (the daemon's wall clock)."""

    def __init__(self, at: float):
        self.offset = at - time.time()

    def __call__(self) -> float:
        return time.time() + self.offset

    def jump_to(self, at: float) -> None:
        self.offset = at - time.time()


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def metric(text: str, name: str) -> float:
    [line] = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[-1])


def rows(d: Daemon) -> Dict[str, Any]:
    d.store.commit()
    return {r.rel: r for r in d.store.iter_all()}


def test_a_daily_budget_pauses_uploads_keeps_the_count_across_a_restart_and_resumes_at_midnight(
        workspace, aws_env, s3_client):
    today = periods_at(time.time())
    noon = time.mktime(time.strptime(today.day + " 12:00", "%Y-%m-%d %H:%M"))
    wall = SpedWall(noon)  # noon today, local: no real midnight can fall inside the test
    port = free_port()
    workspace.config(upload={"max_bytes_per_day": 3000, "upload_workers": 2},
                     daemon={"metrics_address": f"127.0.0.1:{port}"})
    files = make_files(workspace.inbox, [(f"cam/{i}.jpg", bytes([65 + i]) * 1000) for i in range(5)]
                       + [("cam/huge.mp4", b"h" * 4000)])
    assert len(files) == 6

    with running_daemon(workspace.config_path, wall=wall, exit_code=0) as d:
        wait_for(lambda: d.budget.reading().paused, timeout=60, what="uploads to pause for the budget")
        # exactly the budget went: three 1000-byte files (the last may still be in flight when the
        # pause starts: it finishes); the other two wait, pending, no attempt counted
        wait_for(lambda: len(list_keys(s3_client, workspace.bucket)) == 3 and not d.budget.reading().reserved,
                 timeout=30, what="the uploads in flight to finish")
        r = rows(d)
        waiting = [rel for rel, rec in r.items() if rec.state == "pending"]
        assert len(waiting) == 2 and all(r[rel].attempts == 0 for rel in waiting)
        # the file larger than the whole day's budget is parked, with the key to raise
        assert r["cam/huge.mp4"].state == "parked" and r["cam/huge.mp4"].error_kind == "budget"
        assert "max_bytes_per_day" in (r["cam/huge.mp4"].last_error or "")
        reading = d.budget.reading()
        assert reading.used[0] == 3000 and reading.resume_at == today.next_day and reading.waiting == 2
        text = get(port, "/metrics")
        assert metric(text, 's3_uploader_budget_bytes_used{period="day"}') == 3000
        assert metric(text, 's3_uploader_budget_bytes_limit{period="day"}') == 3000
        assert metric(text, "s3_uploader_budget_paused") == 1
        assert metric(text, "s3_uploader_budget_resume_timestamp_seconds") == today.next_day
        health = get(port, "/healthz")  # a pause is not unhealthy, but it shows
        assert health.startswith("ok") and "paused by the upload budget" in health
        api = json.loads(get(port, "/api/status"))["budget"]
        assert api["paused"] and api["day"]["used"] == 3000 and api["day"]["left"] == 0
        st = cli("status", "-c", str(workspace.config_path))
        assert st.returncode == 0 and "Upload budget today" in st.stdout and "3000 B" not in st.stdout
        assert "2.9 KiB of 2.9 KiB used" in st.stdout and "Uploads PAUSED by the budget: 2 file(s)" in st.stdout
    first = d.budget  # the first daemon has stopped; its count is in the database

    # a restart goes on from the stored count: nothing more goes today
    with running_daemon(workspace.config_path, wall=wall, exit_code=0) as d2:
        wait_for(lambda: d2.budget.reading().paused, timeout=60, what="the restarted daemon to pause")
        assert d2.budget.reading().used[0] == 3000 and d2.budget is not first
        assert len(list_keys(s3_client, workspace.bucket)) == 3
        # past local midnight the two files go by themselves
        wall.jump_to(today.next_day + 1)
        wait_for(lambda: len(list_keys(s3_client, workspace.bucket)) == 5, timeout=60,
                 what="the files held back to go after midnight")
        wait_for(lambda: not d2.budget.reading().paused, timeout=10, what="the pause to end")
        tomorrow = periods_at(today.next_day + 1)
        assert d2.budget.reading().used[0] == 2000 and d2.budget.reading().periods.day == tomorrow.day
        assert metric(get(port, "/metrics"), "s3_uploader_budget_paused") == 0
    assert list_keys(s3_client, workspace.bucket) == {k: 1000 for k in files if k != "cam/huge.mp4"}


def test_once_ends_its_pass_when_the_budget_holds_the_rest_back(workspace, s3_client):
    make_files(workspace.inbox, [(f"{i}.bin", b"x" * 1000) for i in range(4)])
    workspace.config(upload={"max_bytes_per_day": 2500})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env(), timeout=120)
    assert r.returncode == 1, r.stderr  # files are left, not in S3
    assert len(list_keys(s3_client, workspace.bucket)) == 2
    assert "Upload budget used:" in r.stderr and "ending this pass" in r.stderr
    st = json.loads(cli("status", "--json", "-c", str(workspace.config_path)).stdout)
    assert st["counts"]["pending"] == 2 and st["counts"]["parked"] == 0 and st["budget"]["day"]["used"] == 2000

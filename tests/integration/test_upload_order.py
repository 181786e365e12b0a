"""Upload order (``[upload] order`` and ``priority``), seen where it matters: the order of the PUT
requests that reach a real server, recorded by the proxy in front of it (tests/faultproxy.py).

Every file exists before the daemon starts (a backlog), with chosen names and mtimes (os.utime) so
that walk order, name order, mtime order and priority order all differ; one upload worker, so
requests go one at a time; and ``max_pending_uploads = 2``, so the scheduler holds two files at
once and the order of the other eight can only come from the backlog in the database.
"""
from __future__ import annotations

import os

import pytest
from helpers import list_keys, make_files, once, status, wait_for

T0 = 1_700_000_000  # 2023-11-14: mtimes in seconds from here
# (relative path, mtime offset): two files share an mtime (ties by path: ascending with oldest,
# descending with newest, which is oldest reversed)
FILES = [("cam2/f.mp4", 0), ("cam0/b.mp4", 10), ("cam1/e.jpg", 20), ("cam1/d.mp4", 30), ("cam2/t1.mp4", 35),
         ("cam2/t0.mp4", 35), ("cam0/c.jpg", 40), ("cam0/a.mp4", 50), ("z.jpg", 60), ("cam2/h.mp4", 70)]
OLDEST = ["cam2/f.mp4", "cam0/b.mp4", "cam1/e.jpg", "cam1/d.mp4", "cam2/t0.mp4", "cam2/t1.mp4", "cam0/c.jpg",
          "cam0/a.mp4", "z.jpg", "cam2/h.mp4"]
NEWEST = ["cam2/h.mp4", "z.jpg", "cam0/a.mp4", "cam0/c.jpg", "cam2/t1.mp4", "cam2/t0.mp4", "cam1/d.mp4",
          "cam1/e.jpg", "cam0/b.mp4", "cam2/f.mp4"]
# priority = *.jpg, cam1/*: the snapshots first, then cam1's other files, then the rest; each by order
PRIORITY_OLDEST = ["cam1/e.jpg", "cam0/c.jpg", "z.jpg", "cam1/d.mp4", "cam2/f.mp4", "cam0/b.mp4", "cam2/t0.mp4",
                   "cam2/t1.mp4", "cam0/a.mp4", "cam2/h.mp4"]
PRIORITY_NEWEST = ["z.jpg", "cam0/c.jpg", "cam1/e.jpg", "cam1/d.mp4", "cam2/h.mp4", "cam0/a.mp4", "cam2/t1.mp4",
                   "cam2/t0.mp4", "cam0/b.mp4", "cam2/f.mp4"]
ONE_AT_A_TIME = {"upload_workers": 1, "max_pending_uploads": 2}


def make_backlog(root):
    files = make_files(root, [(rel, f"{rel} {i}".encode()) for i, (rel, _) in enumerate(FILES)])
    for rel, offset in FILES:
        os.utime(root / rel, (T0 + offset, T0 + offset))
    return files


def put_order(proxy):
    return [e.key for e in proxy.select("PutObject") if e.reached_server and e.status == 200]


@pytest.mark.parametrize("order, priority, expected", [
    ("oldest", "", OLDEST),
    ("newest", "", NEWEST),
    ("oldest", "*.jpg, cam1/*", PRIORITY_OLDEST),
    ("newest", "*.jpg, cam1/*", PRIORITY_NEWEST),
], ids=["oldest", "newest", "priority-oldest", "priority-newest"])
def test_once_sends_the_backlog_in_the_configured_order(workspace, proxy, s3_client, order, priority, expected):
    files = make_backlog(workspace.inbox)
    r = once(workspace, s3={"endpoint_url": proxy.endpoint},
             upload={**ONE_AT_A_TIME, "order": order, "priority": priority})
    assert r.returncode == 0, r.stderr[-4000:]
    assert put_order(proxy) == expected
    assert list_keys(s3_client, workspace.bucket) == {rel: len(data) for rel, data in files.items()}


def test_a_backlog_recorded_before_a_restart_is_sent_in_order_after_it(workspace, proxy, s3_client):
    """The rows exist before the daemon that sends them starts: a first run records all ten files as
    pending (they never settle: stable_seconds is an hour) and stops; the next run sends them in
    priority order, newest first within each pattern."""
    make_backlog(workspace.inbox)
    upload = {**ONE_AT_A_TIME, "order": "newest", "priority": "*.jpg, cam1/*"}
    workspace.config(s3={"endpoint_url": proxy.endpoint}, watch={"stable_seconds": "1h"}, upload=upload)
    d = workspace.start()
    d.wait_log("Watching")
    wait_for(lambda: status(workspace)["counts"]["pending"] == len(FILES), what="ten pending rows")
    assert d.stop() == 0
    assert put_order(proxy) == []

    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload=upload)
    d = workspace.start()
    wait_for(lambda: len(put_order(proxy)) == len(FILES), timeout=60, what="ten PUTs")
    assert put_order(proxy) == PRIORITY_NEWEST
    assert d.stop() == 0


def test_a_reload_that_changes_the_priority_reorders_the_backlog_still_waiting(workspace, proxy, s3_client):
    """Twenty clips and three snapshots newer than all of them, oldest first: the first PUT is held
    at the proxy, so the backlog waits; a reload sets ``priority = *.jpg``; once the PUT goes, the
    snapshots overtake every clip not yet handed over (at most the one in flight and the few the
    sender, the ready heap and the scheduler's queue already hold, 8 with one worker and
    ``max_pending_uploads = 2``)."""
    clips = [f"clip{i:02d}.mp4" for i in range(20)]
    snaps = [f"snap{k}.jpg" for k in range(3)]
    make_files(workspace.inbox, [(rel, rel.encode()) for rel in clips + snaps])
    for i, rel in enumerate(clips + snaps):
        os.utime(workspace.inbox / rel, (T0 + 10 * i, T0 + 10 * i))
    proxy.hold("PutObject")
    upload = {**ONE_AT_A_TIME, "order": "oldest"}
    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload=upload)
    d = workspace.start()
    wait_for(lambda: proxy.held() == 1, what="the first PUT held")
    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload={**upload, "priority": "*.jpg"})
    d.wait_log(r"Configuration reloaded; changed: \[upload\] priority", timeout=30)
    d.wait_log(r"Upload priority: 20 waiting file\(s\) ranked again", timeout=30)  # the clips, to rank 1
    proxy.release(drop=False)
    wait_for(lambda: len(put_order(proxy)) == len(clips) + len(snaps), timeout=60, what="23 PUTs")
    sent = put_order(proxy)
    assert sent[0] == "clip00.mp4"  # the one held
    assert [k for k in sent if k.endswith(".mp4")] == clips and [k for k in sent if k.endswith(".jpg")] == snaps
    assert max(sent.index(s) for s in snaps) <= 10, sent  # without the reload: 20, 21, 22
    assert d.stop() == 0

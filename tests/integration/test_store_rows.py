"""Months of rows: the database does not grow for ever, and nothing periodic costs time that grows with it.

Rows of files deleted or archived more than ``[daemon] forget_after`` ago are forgotten, a bounded
batch at a time; the counts per state that ``status``, metrics and systemd's STATUS show are kept
by triggers, exact through every kind of move; and the periodic reads cost the same at any size
(measured in SQLite virtual-machine steps, which do not depend on the machine's speed).
"""

from __future__ import annotations

import json
import time
from typing import Dict
from helpers import cli, list_keys, wait_for
from inprocess import running_daemon
from s3_uploader.store import Store

DAY = 86400.0


def gone(store: Store, rel: str, state: str) -> None:
    """Take ``rel`` from nothing to ``state`` (deleted or archived) the way the daemon does."""
    store.discover(rel, rel, 1, 1, 1)
    store.start_upload(rel, 1, 1, 1)
    store.finish_upload(rel, 1, 1, 1, "m", "m")
    store.mark_removed(rel, state)


def test_a_running_daemon_forgets_rows_deleted_or_archived_over_forget_after_ago_and_status_shows_it(
        workspace, s3_client, aws_env):
    db = workspace.state / "state.db"
    kept = workspace.inbox / "old" / "kept.mp4"
    kept.parent.mkdir()
    kept.write_bytes(b"still here")
    st = kept.stat()
    with Store(db, clock=lambda: time.time() - 40 * DAY) as store:
        gone(store, "old/deleted.mp4", "deleted")
        gone(store, "old/archived.mp4", "archived")
        # uploaded 40 days ago: forgotten once something else deleted the file (a recorder removing
        # its oldest clips with our cleanup off), kept while the file is there
        for rel, sig in (("old/uploaded.mp4", (1, 1, 1)), ("old/kept.mp4", (st.st_size, st.st_mtime_ns, st.st_ino))):
            store.discover(rel, rel, *sig)
            store.start_upload(rel, *sig)
            store.finish_upload(rel, *sig, "m", "m")
    with Store(db, clock=lambda: time.time() - 10 * DAY) as store:
        gone(store, "recent/deleted.mp4", "deleted")
    workspace.config()  # forget_after at its default, 30 days
    (workspace.inbox / "new.mp4").write_bytes(b"fresh")

    def status() -> Dict[str, int]:
        r = cli("status", "--json", "-c", str(workspace.config_path))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["counts"]

    assert (status()["deleted"], status()["archived"]) == (2, 1)
    with running_daemon(workspace.config_path) as d:
        wait_for(lambda: "new.mp4" in list_keys(s3_client, workspace.bucket), what="new.mp4 uploaded")
        wait_for(lambda: d.store.get("old/deleted.mp4") is None and d.store.get("old/archived.mp4") is None
                 and d.store.get("old/uploaded.mp4") is None,
                 what="the rows deleted, archived or uploaded-and-gone 40 days ago to be forgotten")
        wait_for(lambda: status()["uploaded"] == 2, what="status to show new.mp4 uploaded")
        assert d.store.get("old/kept.mp4").state == "uploaded"
        assert status() == {"pending": 0, "uploading": 0, "uploaded": 2, "failed": 0, "parked": 0, "deleted": 1,
                            "archived": 0}
        assert d.store.get("recent/deleted.mp4").state == "deleted"


def test_once_forgets_them_too_so_runs_from_cron_do_not_grow_the_database(workspace, s3_client):
    db = workspace.state / "state.db"
    with Store(db, clock=lambda: time.time() - 40 * DAY) as store:
        gone(store, "old/deleted.mp4", "deleted")
    workspace.config(daemon={"forget_after": "30d"})
    (workspace.inbox / "new.mp4").write_bytes(b"fresh")
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    assert "Forgot 1 row(s) of files deleted or archived over 30 day(s) ago" in r.stderr + r.stdout
    assert "new.mp4" in list_keys(s3_client, workspace.bucket)
    with Store(db, readonly=True) as store:
        assert store.get("old/deleted.mp4") is None and store.counts()["uploaded"] == 1

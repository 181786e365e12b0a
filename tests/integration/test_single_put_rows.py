"""A small file's row through the sender against the real server behind the fault proxy: waiting
until it is recorded uploaded in one step, or failed and then uploaded from failed.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from pathlib import Path
from typing import Optional, Tuple

from helpers import get_bytes


def row_of(db: Path, rel: str) -> Optional[Tuple[str, int, Optional[str], Optional[str]]]:
    """(state, attempts, md5, error_kind) of a file's row, read as another process would."""
    if not db.exists():
        return None
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT state, attempts, md5, error_kind FROM files WHERE path = ?",
                            (os.fsencode(rel),)).fetchone()
    except sqlite3.OperationalError:  # the schema is not there yet
        return None
    finally:
        conn.close()


def test_a_small_file_in_flight_keeps_its_row_waiting_and_is_recorded_uploaded_in_one_step(
        workspace, proxy, s3_client):
    data = os.urandom(3000)
    (workspace.inbox / "cam").mkdir()
    (workspace.inbox / "cam" / "a.jpg").write_bytes(data)
    workspace.config(s3={"endpoint_url": proxy.endpoint})
    proxy.hold("PutObject")
    d = workspace.start()
    db = workspace.state / "state.db"
    # the row is group-committed within 50 ms of its discovery: wait until another process sees it
    d.wait_until(lambda: proxy.held() == 1 and row_of(db, "cam/a.jpg") is not None, timeout=30,
                 what="the PUT in flight and the file's row committed")
    # the asyncio sender writes nothing when a file starts: a crash now leaves it waiting, sent again
    assert row_of(db, "cam/a.jpg") == ("pending", 0, None, None)
    proxy.release(drop=False)
    d.wait_until(lambda: (row_of(db, "cam/a.jpg") or ("",))[0] == "uploaded", timeout=30, what="the upload recorded")
    assert row_of(db, "cam/a.jpg") == ("uploaded", 0, hashlib.md5(data).hexdigest(), None)
    assert get_bytes(s3_client, workspace.bucket, "cam/a.jpg") == data
    assert d.stop() == 0


def test_a_small_file_whose_put_fails_is_recorded_failed_then_uploaded_from_failed_in_one_step(
        workspace, proxy, s3_client):
    data = os.urandom(2000)
    (workspace.inbox / "b.jpg").write_bytes(data)
    workspace.config(s3={"endpoint_url": proxy.endpoint},
                     upload={"retry_backoff_base": "2s", "retry_backoff_max": "2s"})
    proxy.force("PutObject", "auth")  # 403: not retried inside the request, so the attempt fails
    d = workspace.start()
    db = workspace.state / "state.db"
    d.wait_until(lambda: (row_of(db, "b.jpg") or ("",))[0] == "failed", timeout=30, what="the failure recorded")
    assert row_of(db, "b.jpg") == ("failed", 1, None, "auth")
    d.wait_until(lambda: (row_of(db, "b.jpg") or ("",))[0] == "uploaded", timeout=30, what="the retry recorded")
    assert row_of(db, "b.jpg") == ("uploaded", 0, hashlib.md5(data).hexdigest(), None)
    assert get_bytes(s3_client, workspace.bucket, "b.jpg") == data
    assert d.stop() == 0
    assert re.search(r"Uploading b\.jpg attempt 2", d.output())

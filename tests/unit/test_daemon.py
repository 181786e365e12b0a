"""The daemon on a MemoryRemote, not started or prepared only: the start-up sweep (multipart uploads
nobody owns are aborted, ours are kept, a server that cannot list them is a warning), and the small
typed views health, metrics, notify and reload read it through.
"""

from __future__ import annotations

from helpers import write_config

from s3_uploader.config import load_config, parse_config
from s3_uploader.daemon import Daemon
from s3_uploader.health import StateSnapshot, health_problem, judge
from s3_uploader.notify import status_line
from s3_uploader.preflight import abort_stale_multipart
from s3_uploader.reload import apply_config
from s3_uploader.remote import MemoryRemote, PutOptions
from s3_uploader.runmode import RunMode
from s3_uploader.store import Store
from s3_uploader.views import Activity, HealthView, Stats

MiB = 1024 * 1024


def daemon_on(tmp_path, remote, prefix):
    (tmp_path / "in").mkdir(exist_ok=True)
    cfg = write_config(tmp_path / "c.ini", {"watch": {"directory_to_watch": tmp_path / "in"},
                                             "s3": {"bucket": "b", "prefix": prefix},
                                             "daemon": {"db_path": tmp_path / "s.db"}})
    return Daemon(load_config(cfg), remote=remote, store=Store(tmp_path / "s.db"))


def test_start_up_aborts_only_unowned_uploads_under_a_fixed_prefix(tmp_path):
    remote = MemoryRemote()
    owned = remote.create_multipart("cams/a.mp4", PutOptions())
    orphan = remote.create_multipart("cams/b.mp4", PutOptions())
    outside = remote.create_multipart("camsX/c.mp4", PutOptions())  # shares the letters, not the folder
    d = daemon_on(tmp_path, remote, "cams")
    d.store.discover("a.mp4", "cams/a.mp4", 10, 1, 1)
    d.store.set_multipart("a.mp4", owned, 5 * MiB)
    d.prepare()
    assert set(remote.uploads) == {owned, outside}
    assert orphan not in remote.uploads
    d.store.close()


def test_without_a_fixed_prefix_only_uploads_to_our_own_keys_are_aborted(tmp_path):
    remote = MemoryRemote()
    ours = remote.create_multipart("x/ours.mp4", PutOptions())
    theirs = remote.create_multipart("x/theirs.mp4", PutOptions())
    d = daemon_on(tmp_path, remote, "")
    d.store.discover("x/ours.mp4", "x/ours.mp4", 10, 1, 1)  # its upload id was never recorded (crash)
    assert abort_stale_multipart(d.store, d.remote, d.keymaker, d.cfg.s3.bucket) == 1
    assert set(remote.uploads) == {theirs}
    assert ours not in remote.uploads
    d.store.close()


def test_a_server_without_list_multipart_uploads_is_a_warning_not_a_failure_to_start(tmp_path, caplog):
    class NoListing(MemoryRemote):
        def list_multipart_uploads(self, prefix):
            from s3_uploader.remote import memory_error
            raise memory_error("NotImplemented", "A header you provided implies functionality that is not implemented")

    d = daemon_on(tmp_path, NoListing(), "cams")
    d.prepare()
    assert "Could not look for stale multipart uploads under s3://b/cams/" in caplog.text
    assert "AbortIncompleteMultipartUpload" in caplog.text
    d.store.close()


# -- the typed views health, metrics, notify and reload get ---------------------------------------------

def _view(**kw):
    base = dict(stopping=False, threads={"scanner": True, "scheduler": True}, watcher_alive=True, root_moved=None,
                heartbeats={"scanner": 100.0, "scheduler": 100.0}, max_age=120.0)
    base.update(kw)
    return HealthView(**base)


def test_the_health_rule_judges_one_reading_of_the_daemon():
    assert judge(_view(), now=110.0) is None
    assert judge(_view(threads={}), now=110.0) == "starting"
    assert judge(_view(stopping=True), now=110.0) == "stopping"
    assert judge(_view(watcher_alive=False), now=110.0) == "the filesystem watcher thread has stopped"
    assert judge(_view(watcher_alive=None), now=110.0) is None  # no filesystem events in use
    assert judge(_view(threads={"scanner": True, "scheduler": False}), now=110.0) == "the scheduler thread has stopped"
    assert judge(_view(), now=400.0) == "the scanner loop has made no progress for 300s"
    assert judge(_view(), now=400.0, max_age=1000.0) is None
    assert judge(_view(root_moved="/elsewhere"), now=110.0).startswith("the watch directory now resolves to /elsewhere")


def test_a_daemon_not_started_reads_as_starting_with_nothing_queued(tmp_path):
    d = daemon_on(tmp_path, MemoryRemote(), "")
    assert health_problem(d) == "starting"
    d.inflight.add("a.txt")
    act = d.activity()
    assert (act.queued, act.uploading, act.outage, act.outages, act.bandwidth_limit) == (0, 1, None, 0, None)
    d.store.close()


def test_the_status_line_is_made_from_the_activity_the_counters_and_the_snapshot():
    stats = Stats(uploaded_files=7)
    snap = StateSnapshot()
    snap.counts.update(failed=1, parked=2)
    line = status_line(Activity(queued=3, uploading=2, outage={"seconds": 42.0}, outages=1, bandwidth_limit=None),
                       stats, snap)
    assert line == ("S3 endpoint not answering for 42s; 3 queued, 2 uploading, 3 failed, 7 uploaded since start; "
                    "last upload none yet")


def test_a_reload_goes_through_the_daemons_public_reload_methods(tmp_path):
    d = daemon_on(tmp_path, MemoryRemote(), "")
    old_filters = d.filters
    text = (f"[watch]\ndirectory_to_watch = {tmp_path / 'in'}\ninclude = *.mp4\n[s3]\nbucket = b\n"
            f"[daemon]\ndb_path = {tmp_path / 's.db'}\n")
    new = parse_config(text)
    apply_config(d, new, d.cfg.differences(new))
    assert d.cfg is new and d.filters is not old_filters
    assert d.filters.file_allowed("x.mp4") and not d.filters.file_allowed("x.txt")
    assert d.scan_request.is_set() and d.wake.is_set()
    d.store.close()


def test_the_run_mode_answers_each_question_a_part_asks():
    assert RunMode.ONCE.single_pass and not RunMode.ONCE.serves and not RunMode.ONCE.patient
    assert not RunMode.ONCE.starts_while_endpoint_down
    assert RunMode.SERVICE.serves and RunMode.SERVICE.patient and RunMode.SERVICE.starts_while_endpoint_down
    assert not RunMode.SERVICE.single_pass


# -- start-up round trips: the sweep's listing goes out beside the access check ----------------------

class Overlapping(MemoryRemote):
    """A bucket whose access check answers only once the multipart listing has been asked for (or
    fails after a deadline): start-up passes only if the two requests are in flight together."""

    def __init__(self, check_code=None):
        super().__init__()
        import threading
        self.listed = threading.Event()
        self.checked = threading.Event()
        self.check_code = check_code
        self.aborted = []

    def check_access(self):
        assert self.listed.wait(10.0), "the multipart listing was not asked for while HeadBucket was in flight"
        self.checked.set()
        if self.check_code is not None:
            from s3_uploader.remote import memory_error
            raise memory_error(self.check_code, "no such bucket")

    def list_multipart_uploads(self, prefix):
        self.listed.set()
        return super().list_multipart_uploads(prefix)

    def abort_multipart(self, key, upload_id):
        assert self.checked.is_set(), "an upload was aborted before the access check answered"
        self.aborted.append(upload_id)
        super().abort_multipart(key, upload_id)


def test_the_sweeps_listing_overlaps_the_access_check_and_aborts_only_after_it(tmp_path):
    remote = Overlapping()
    owned = remote.create_multipart("cams/a.mp4", PutOptions())
    orphan = remote.create_multipart("cams/b.mp4", PutOptions())
    d = daemon_on(tmp_path, remote, "cams")
    d.store.discover("a.mp4", "cams/a.mp4", 10, 1, 1)
    d.store.set_multipart("a.mp4", owned, 5 * MiB)
    d.prepare()
    assert remote.aborted == [orphan]
    assert set(remote.uploads) == {owned}
    d.store.close()


def test_a_failed_access_check_aborts_nothing_though_the_listing_went_out(tmp_path):
    import pytest

    from s3_uploader.preflight import StartupError
    remote = Overlapping("NoSuchBucket")
    orphan = remote.create_multipart("cams/b.mp4", PutOptions())
    d = daemon_on(tmp_path, remote, "cams")
    with pytest.raises(StartupError, match="S3 bucket b does not exist"):
        d.prepare()
    assert remote.listed.is_set() and remote.aborted == [] and set(remote.uploads) == {orphan}
    d.store.close()

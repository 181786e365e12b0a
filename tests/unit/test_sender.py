"""The asyncio sender on its own: capacity, batched bookkeeping, failures, and an ordered stop.

The remote here is MemoryRemote with an awaitable PUT whose answers the test releases, so what is
in flight at any moment is decided by the test, not by timing. The sender against the real server
is exercised by every pipeline test (obstore is the default transport)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from typing import Dict, List, Optional

import pytest
from helpers import wait_for

from s3_uploader.concurrency import Controller
from s3_uploader.remote import MemoryRemote, PutOptions, memory_error
from s3_uploader.scanner import FileStat
from s3_uploader.sender import AsyncSender
from s3_uploader.store import Store, StoreError
from s3_uploader.uploader import Job, Outcome, Settings, Uploader

SETTINGS = Settings(multipart_threshold=5 << 20, multipart_chunksize=5 << 20, max_concurrency=2,
                    put_options=PutOptions(), follow_symlinks=False)


class GatedRemote(MemoryRemote):
    """MemoryRemote whose async PUT waits until the test opens the gate for that key."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0
        self.gates: Dict[str, threading.Event] = {}
        self.fail: Dict[str, Exception] = {}
        self.wrong_etag: set = set()

    def gate(self, key: str) -> threading.Event:
        return self.gates.setdefault(key, threading.Event())

    def put_object_soon(self, key: str, data: bytes, md5: bytes, opts: PutOptions, done) -> "asyncio.Task[str]":
        """The sender's contract, as ObstoreRemote keeps it: start on the running loop, answer
        ``done(etag, None)`` or ``done(None, error)`` there, return something to cancel."""
        task = asyncio.ensure_future(self._put(key, data, md5, opts))

        def settle(t: "asyncio.Task[str]") -> None:
            if t.cancelled():
                done(None, asyncio.CancelledError())
            elif t.exception() is not None:
                done(None, t.exception())
            else:
                done(t.result(), None)
        task.add_done_callback(settle)
        return task

    async def _put(self, key: str, data: bytes, md5: bytes, opts: PutOptions) -> str:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            gate = self.gate(key)
            while not gate.is_set():
                await asyncio.sleep(0.005)
            if key in self.fail:
                raise self.fail[key]
            etag = self.put_object(key, data, len(data), md5, opts)
            if key in self.wrong_etag:  # stored as other bytes would be: an unencrypted object, another MD5
                with self._lock:
                    self.objects[key] = (data, "0" * 32, opts)
                return "0" * 32
            return etag
        finally:
            self.in_flight -= 1


@pytest.fixture
def rig(tmp_path):
    yield from _rig(tmp_path, capacity=3)


@pytest.fixture
def make_rig(tmp_path):
    """A rig whose sender is built with the test's own arguments (a controller, a memory cap)."""
    made = []

    def make(**kw):
        gen = _rig(tmp_path, **kw)
        made.append(gen)
        return next(gen)
    yield make
    for gen in made:
        with pytest.raises(StopIteration):
            next(gen)


def _rig(tmp_path, **sender_kw):
    root = tmp_path / "inbox"
    root.mkdir()
    store = Store(tmp_path / "s.db")
    remote = GatedRemote()
    uploader = Uploader(remote, store, lambda: SETTINGS)
    recorded: List[Outcome] = []
    batches: List[int] = []
    broken = {"on": False}
    ended: Dict[str, BaseException] = {}

    def finish(outcomes: List[Outcome]) -> None:
        if broken["on"]:
            raise StoreError("State database s.db cannot be written: the disk is full")
        batches.append(len(outcomes))
        recorded.extend(outcomes)

    def run() -> None:
        try:
            sender.run()
        except BaseException as exc:  # what the daemon's thread guard would see
            ended["error"] = exc

    def job(name: str, data: bytes = b"") -> Job:
        p = root / name
        p.write_bytes(data or name.encode() * 10)
        st = os.stat(p)
        return Job(name, str(p), name, FileStat(name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev), small=True)

    limit = {"on": False}
    diverted: List[Job] = []
    sender = AsyncSender(remote, uploader, finish, allowed=lambda: not limit["on"], divert=diverted.extend,
                         **sender_kw)
    sender.limit, sender.diverted, sender.broken, sender.ended = limit, diverted, broken, ended  # for the tests
    thread = threading.Thread(target=run, name="test-sender")
    sender.thread = thread
    thread.start()
    yield sender, remote, job, recorded, batches
    sender.close()
    for g in list(remote.gates.values()):
        g.set()
    thread.join(10)
    assert not thread.is_alive()
    uploader.close()
    store.close()


def fill(sender, remote, job, n: int) -> List[Job]:
    """Submit ``n`` jobs and wait until the sender has its capacity (3) of them in flight."""
    jobs = [job(f"f{i}.bin") for i in range(n)]
    for j in jobs:
        sender.submit(j)
    wait_for(lambda: remote.in_flight == 3, what="three requests in flight")
    return jobs


def kinds(recorded: List[Outcome]) -> Dict[str, str]:
    return {o.job.rel: o.kind for o in recorded}


def test_it_keeps_at_most_capacity_in_flight_and_records_each_file_once(rig):
    sender, remote, job, recorded, batches = rig
    jobs = fill(sender, remote, job, 10)
    assert sender.backlog() == 10 and sender.queued() == 7
    for j in jobs:
        remote.gate(j.key).set()
    wait_for(lambda: len(recorded) == 10, what="every file recorded")
    assert remote.most_in_flight == 3
    assert kinds(recorded) == {j.rel: "uploaded" for j in jobs}
    for o in recorded:
        assert o.etag == o.md5 == hashlib.md5(remote.objects[o.job.key][0]).hexdigest()
    assert sum(batches) == 10 and sender.backlog() == 0


def test_failures_are_outcomes_of_their_file_and_the_rest_go_on(rig):
    sender, remote, job, recorded, _ = rig
    ok, down, bad = job("ok.bin"), job("down.bin"), job("bad.bin")
    remote.fail["down.bin"] = memory_error("SlowDown", "reduce your request rate")
    remote.wrong_etag.add("bad.bin")
    for j in (ok, down, bad):
        remote.gate(j.key).set()
        sender.submit(j)
    wait_for(lambda: len(recorded) == 3, what="three outcomes")
    out = {o.job.rel: o for o in recorded}
    assert out["ok.bin"].kind == "uploaded"
    assert out["down.bin"].kind == "failed" and out["down.bin"].failure.kind == "throttled"
    assert out["bad.bin"].kind == "failed" and "not the MD5 sent" in out["bad.bin"].failure.message


def test_on_a_kms_bucket_each_answer_is_proven_by_a_head_off_the_loop_and_nothing_is_deleted(rig):
    """A bucket with default SSE-KMS answers with ETags that are not the MD5 (our options ask for no
    encryption). Before: each file failed with "not the MD5 sent" and obstore deleted the object."""
    sender, remote, job, recorded, _ = rig
    remote.sse = "aws:kms"
    loop_thread = sender.thread.ident
    heads: List[Optional[int]] = []
    real_head = remote.head

    def head(key):
        heads.append(threading.get_ident())
        return real_head(key)
    remote.head = head
    jobs = [job(f"k{i}.bin") for i in range(4)]
    for j in jobs:
        remote.gate(j.key).set()
        sender.submit(j)
    wait_for(lambda: len(recorded) == 4, what="four outcomes")
    for o in recorded:
        data, etag, _opts = remote.objects[o.job.key]
        assert o.kind == "uploaded", o
        assert o.etag == etag != o.md5 == hashlib.md5(data).hexdigest()
    assert len(heads) == 4 and loop_thread not in heads  # one HEAD per file, none on the loop
    assert "delete" not in remote.calls


def test_a_stop_waits_for_a_head_in_flight_and_a_cancel_abandons_it_as_stopped_by_shutdown(rig):
    sender, remote, job, recorded, _ = rig
    remote.sse = "aws:kms"
    release = threading.Event()
    real_head = remote.head

    def slow_head(key):
        release.wait(10)
        return real_head(key)
    remote.head = slow_head
    j = job("held.bin")
    remote.gate(j.key).set()
    sender.submit(j)
    wait_for(lambda: remote.calls.get("put_object") == 1 and sender.backlog() == 1, what="the PUT answered")
    sender.close()
    assert not sender.thread.join(0.3) and sender.thread.is_alive()  # the HEAD keeps the loop running
    assert recorded == []
    sender.cancel()
    wait_for(lambda: len(recorded) == 1, what="the abandoned HEAD recorded")
    assert recorded[0].kind == "failed" and recorded[0].failure.kind == "shutdown"
    release.set()  # the HEAD's (daemon) thread ends
    sender.thread.join(10)
    assert not sender.thread.is_alive()


def test_a_file_changed_or_gone_before_it_is_read_is_not_sent(rig):
    sender, remote, job, recorded, _ = rig
    changed, gone = job("changed.bin"), job("gone.bin")
    with open(changed.path, "ab") as f:
        f.write(b"more")
    os.unlink(gone.path)
    sender.submit(changed)
    sender.submit(gone)
    wait_for(lambda: len(recorded) == 2, what="two outcomes")
    assert kinds(recorded) == {"changed.bin": "changed", "gone.bin": "vanished"}
    assert remote.calls.get("put_object", 0) == 0


def test_when_recording_fails_the_loop_ends_only_after_the_requests_in_flight_have_answered(rig):
    """The daemon stops on a database that refuses writes; obstore's runtime must not be left with
    requests that answer on a closed loop (at interpreter exit that aborts the process)."""
    sender, remote, job, recorded, _ = rig
    jobs = fill(sender, remote, job, 3)
    sender.broken["on"] = True
    remote.gate(jobs[0].key).set()
    wait_for(lambda: remote.in_flight == 2, what="the first answer")
    sender.thread.join(0.3)  # time enough to end, were it not waiting for the two in flight
    assert sender.thread.is_alive() and remote.in_flight == 2
    for j in jobs[1:]:
        remote.gate(j.key).set()
    sender.thread.join(10)
    assert not sender.thread.is_alive() and remote.in_flight == 0
    assert isinstance(sender.ended.get("error"), StoreError) and recorded == []
    assert set(remote.objects) == {j.key for j in jobs}  # sent, not recorded: sent again at next start


def test_close_hands_back_queued_jobs_and_lets_those_in_flight_finish(rig):
    sender, remote, job, recorded, _ = rig
    jobs = fill(sender, remote, job, 5)
    dropped = sender.close()
    assert [j.rel for j in dropped] == ["f3.bin", "f4.bin"]
    # a scheduler still turning when shutdown closed the sender: the job is refused, nothing raised
    # (it once raised, and the scheduler thread died with a traceback), and it stays with its caller
    assert sender.submit(job("late.bin")) is False
    assert sender.backlog() == 3
    for j in jobs[:3]:
        remote.gate(j.key).set()
    wait_for(lambda: len(recorded) == 3, what="the three in flight recorded")
    assert kinds(recorded) == {"f0.bin": "uploaded", "f1.bin": "uploaded", "f2.bin": "uploaded"}


def test_cancel_abandons_requests_in_flight_as_stopped_by_shutdown(rig):
    sender, remote, job, recorded, _ = rig
    stuck = job("stuck.bin")
    sender.submit(stuck)
    wait_for(lambda: remote.in_flight == 1, what="one request in flight")
    sender.close()
    sender.cancel()
    wait_for(lambda: len(recorded) == 1, what="the abandoned request recorded")
    assert recorded[0].kind == "failed" and recorded[0].failure.kind == "shutdown"
    assert "stuck.bin" not in remote.objects


def test_jobs_queued_when_a_bandwidth_limit_starts_go_to_the_workers_not_the_loop(rig):
    sender, remote, job, recorded, _ = rig
    jobs = fill(sender, remote, job, 5)
    sender.limit["on"] = True  # a timetable entry starts: the loop cannot wait for the limiter
    remote.gate("f0.bin").set()  # a completion wakes the loop
    wait_for(lambda: len(sender.diverted) == 2, what="the queued jobs handed over")
    assert [j.rel for j in sender.diverted] == ["f3.bin", "f4.bin"]
    for j in jobs[1:3]:
        remote.gate(j.key).set()
    wait_for(lambda: len(recorded) == 3, what="those in flight finished here")
    assert sender.backlog() == 0 and "f3.bin" not in remote.objects


def test_a_proof_head_abandoned_by_shutdown_holds_neither_the_sender_loop_nor_the_exit(rig):  # noqa: F811
    sender, remote, job, recorded, _ = rig
    remote.sse = "aws:kms"  # answers whose ETag is not the MD5: each is proven by a HEAD
    release = threading.Event()
    head_threads = []
    real_head = remote.head

    def slow_head(key):  # a HEAD on a link that has stalled
        head_threads.append(threading.current_thread())
        release.wait(30)
        return real_head(key)
    remote.head = slow_head
    j = job("held.bin")
    remote.gate(j.key).set()
    sender.submit(j)
    try:
        wait_for(lambda: head_threads, what="the HEAD in flight")
        sender.close()
        sender.cancel()  # shutdown's time is up
        wait_for(lambda: len(recorded) == 1, what="the abandoned HEAD recorded")
        assert recorded[0].failure.kind == "shutdown"
        sender.thread.join(5)
        # today the loop's end waited for its default executor, i.e. for the stalled HEAD
        assert not sender.thread.is_alive(), "the sender's loop waited for the abandoned HEAD"
        # and the interpreter joins no daemon thread at exit (it joins every ThreadPoolExecutor's)
        assert head_threads[0].daemon, "the HEAD runs on a thread the interpreter waits for at exit"
    finally:
        release.set()
        for t in head_threads:
            t.join(10)


def test_the_bodies_in_flight_stay_under_the_memory_cap_and_a_larger_file_still_goes_alone(make_rig):
    sender, remote, job, recorded, _ = make_rig(capacity=10, memory_cap=250)
    jobs = [job(f"m{i}.bin", b"x" * 100) for i in range(5)] + [job("big.bin", b"y" * 1000)]
    for j in jobs:
        sender.submit(j)
    wait_for(lambda: remote.in_flight == 2, what="two 100-byte bodies in flight")
    assert sender.queued() == 4  # a third would hold 300 bytes: over the cap, whatever the limit (10)
    for j in jobs[:5]:
        remote.gate(j.key).set()
    wait_for(lambda: len(recorded) == 5, what="the small ones recorded")
    wait_for(lambda: remote.in_flight == 1, what="the 1000-byte file in flight on its own")
    remote.gate("big.bin").set()
    wait_for(lambda: len(recorded) == 6, what="every file recorded")
    assert remote.most_in_flight == 2 and kinds(recorded) == {j.rel: "uploaded" for j in jobs}


def test_a_throttling_answer_halves_the_senders_limit_and_fewer_requests_go_out(make_rig):
    controller = Controller(start=4, low=1, high=8)
    sender, remote, job, recorded, _ = make_rig(controller=controller)
    assert sender.capacity == 4
    remote.fail["t0.bin"] = memory_error("SlowDown", "reduce your request rate")
    jobs = [job(f"t{i}.bin") for i in range(12)]
    for j in jobs:
        sender.submit(j)
    wait_for(lambda: remote.in_flight == 4, what="four requests in flight")
    remote.gate("t0.bin").set()
    wait_for(lambda: len(recorded) == 1, what="the throttled answer recorded")
    assert recorded[0].failure is not None and recorded[0].failure.kind == "throttled"
    assert sender.capacity == controller.limit == 2
    assert remote.in_flight == 3  # the three still in flight: no new one may start at a limit of 2
    remote.most_in_flight = 3
    for j in jobs[1:4]:
        remote.gate(j.key).set()
    wait_for(lambda: len(recorded) == 4, what="the first four answered")
    wait_for(lambda: remote.in_flight == 2, what="two in flight at the halved limit")
    for j in jobs[4:]:
        remote.gate(j.key).set()
    wait_for(lambda: len(recorded) == 12, what="every file recorded")
    assert remote.most_in_flight == 3  # never above what was already in flight, then 2


def test_a_pinned_capacity_is_a_controller_that_never_moves(rig):
    sender, *_ = rig
    assert sender.capacity == 3 and sender.controller.pinned

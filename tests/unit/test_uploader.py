"""Sending one file: single PUT, multipart, resume, and every way a file can change under us."""
from __future__ import annotations

import hashlib
import os
from typing import Dict, List

import pytest

from s3_uploader.remote import MemoryRemote, PutOptions, RemoteError
from s3_uploader.scanner import FileStat
from s3_uploader.store import Part, Store
from s3_uploader.uploader import FileBody, Job, Settings, Uploader, part_size_for

MiB = 1024 * 1024
SETTINGS = Settings(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2,
                    put_options=PutOptions(), follow_symlinks=False)


@pytest.fixture
def env(tmp_path):
    store = Store(tmp_path / "s.db")
    remote = MemoryRemote()
    up = Uploader(remote, store, lambda: SETTINGS, part_workers=4)
    yield tmp_path, store, remote, up
    up.close()
    store.close()


def job_for(path, rel, key=None, **kw):
    st = os.stat(path)
    return Job(rel, str(path), key or rel, FileStat(rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev), **kw)


def register(store, job):
    store.discover_many([(job.rel, job.key, job.stat.size, job.stat.mtime_ns, job.stat.ino)])
    store.start_upload(job.rel, job.stat.size, job.stat.mtime_ns, job.stat.ino)


def test_a_small_file_goes_in_one_put_proven_by_its_etag(env):
    tmp, store, remote, up = env
    p = tmp / "a.bin"
    p.write_bytes(b"hello")
    o = up.upload(job_for(p, "a.bin"))
    assert o.kind == "uploaded" and o.md5 == hashlib.md5(b"hello").hexdigest() == o.etag
    assert remote.objects["a.bin"][0] == b"hello"
    assert remote.calls.get("head", 0) == 0  # the PUT response proved it: no second request


def test_a_large_file_goes_in_parts_and_arrives_byte_identical(env):
    tmp, store, remote, up = env
    data = os.urandom(12 * MiB + 7)
    p = tmp / "big.bin"
    p.write_bytes(data)
    job = job_for(p, "big.bin")
    register(store, job)
    o = up.upload(job)
    assert o.kind == "uploaded"
    assert remote.objects["big.bin"][0] == data
    assert remote.calls["upload_part"] == 3 and not remote.uploads
    assert store.get("big.bin").upload_id is None  # bookkeeping cleared once complete


def test_a_recorded_multipart_upload_resumes_sending_only_missing_parts(env):
    tmp, store, remote, up = env
    data = os.urandom(15 * MiB)
    p = tmp / "big.bin"
    p.write_bytes(data)
    job = job_for(p, "big.bin")
    register(store, job)
    uid = remote.create_multipart("big.bin", PutOptions())
    first = data[:5 * MiB]
    etag = remote.upload_part("big.bin", uid, 1, first, len(first), hashlib.md5(first).digest())
    store.set_multipart("big.bin", uid, 5 * MiB)
    store.add_part("big.bin", uid, Part(1, 5 * MiB, etag, hashlib.md5(first).hexdigest()))
    remote.calls.clear()
    o = up.upload(job_for(p, "big.bin", upload_id=uid, part_size=5 * MiB))
    assert o.kind == "uploaded"
    assert remote.calls["upload_part"] == 2 and remote.calls["list_parts"] == 1
    assert remote.objects["big.bin"][0] == data


def test_a_file_that_changes_while_being_sent_is_not_recorded_as_uploaded(env):
    tmp, store, remote, up = env
    p = tmp / "grows.log"
    p.write_bytes(b"first line\n")
    job = job_for(p, "grows.log")
    real_put = remote.put_object

    def put_and_append(*a, **kw):
        with open(p, "ab") as f:
            f.write(b"second line\n")
        return real_put(*a, **kw)

    remote.put_object = put_and_append
    o = up.upload(job)
    assert o.kind == "changed" and "while it was being read" in o.reason


def test_a_file_between_one_mib_and_the_threshold_is_streamed_in_one_put_paced_per_mib(tmp_path):
    store, remote = Store(tmp_path / "s.db"), MemoryRemote()
    paid = []
    up = Uploader(remote, store, lambda: SETTINGS, throttle=paid.append)
    try:
        data = os.urandom(3 * MiB + 5)
        p = tmp_path / "clip.mp4"
        p.write_bytes(data)
        o = up.upload(job_for(p, "clip.mp4"))
        assert o.kind == "uploaded" and o.etag == hashlib.md5(data).hexdigest()
        assert remote.objects["clip.mp4"][0] == data
        assert remote.calls["put_object"] == 1 and "create_multipart" not in remote.calls
        assert paid == [MiB, MiB, MiB, 5]  # the limiter paces the stream, not one 3 MiB burst
    finally:
        up.close()
        store.close()


def test_a_file_that_shrinks_while_it_is_streamed_is_changed_not_uploaded(env):
    tmp, store, remote, up = env
    p = tmp / "clip.mp4"
    p.write_bytes(os.urandom(3 * MiB))
    job = job_for(p, "clip.mp4")
    real_put = remote.put_object

    def truncate_then_put(key, body, length, md5, opts):
        os.truncate(p, 2 * MiB)  # after the MD5 pass, before the send pass
        return real_put(key, body, length, md5, opts)

    remote.put_object = truncate_then_put
    o = up.upload(job)
    assert o.kind == "changed" and "shrank" in o.reason
    assert "clip.mp4" not in remote.objects


def test_a_streamed_body_rewinds_for_a_retry_and_reads_exact_lengths(tmp_path):
    data = os.urandom(2 * MiB + 3)
    p = tmp_path / "b.bin"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        body = FileBody(fd, len(data), lambda n: None)
        first = body.read(16384)
        assert first == data[:16384] and body.tell() == 16384 and len(body) == len(data) - 16384
        assert body.read(MiB + 10) == data[16384:16384 + MiB + 10]  # across a buffer boundary
        assert body.seek(0) == 0 and body.read() == data  # what an HTTP client does before a retry
        assert body.read(1) == b""
        body.seek(-3, 2)
        assert body.read() == data[-3:]
    finally:
        os.close(fd)


def test_a_body_at_an_offset_is_that_range_of_the_file_and_rewinds_to_its_start(tmp_path):
    data = os.urandom(3 * MiB)
    p = tmp_path / "b.bin"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        body = FileBody(fd, MiB + 9, lambda n: None, 2 * MiB - 9)
        assert body.read(100) == data[2 * MiB - 9:2 * MiB + 91]
        assert body.seek(0) == 0 and body.read() == data[2 * MiB - 9:]
        short = FileBody(fd, MiB + 10, lambda n: None, 2 * MiB - 9)  # one byte past the end
        with pytest.raises(Exception, match="shrank"):
            short.read()
        assert short.short
    finally:
        os.close(fd)


def test_parts_are_streamed_from_the_file_not_held_whole_and_paced_per_buffer(tmp_path):
    store, remote = Store(tmp_path / "s.db"), MemoryRemote()
    paid: List[int] = []
    up = Uploader(remote, store, lambda: SETTINGS, part_workers=1, throttle=paid.append)
    bodies: List[object] = []
    reads: List[int] = []
    real_part = remote.upload_part

    def spy(key, uid, n, body, length, md5, checksum=None):
        bodies.append(body)
        real_read = body.read

        def read(k=-1):
            out = real_read(k)
            reads.append(len(out))
            return out
        body.read = read
        return real_part(key, uid, n, body, length, md5, checksum)

    remote.upload_part = spy
    try:
        data = os.urandom(12 * MiB + 7)
        p = tmp_path / "big.bin"
        p.write_bytes(data)
        job = job_for(p, "big.bin")
        register(store, job)
        o = up.upload(job)
        assert o.kind == "uploaded" and remote.objects["big.bin"][0] == data
        # a view of the file per part (the memory remote reads each whole: what it hands out is
        # the part's length, read through the view), never the part's bytes in memory before the send
        assert len(bodies) == 3 and not any(isinstance(b, (bytes, bytearray, memoryview)) for b in bodies)
        assert sorted(reads) == [2 * MiB + 7, 5 * MiB, 5 * MiB]
        assert sorted(paid) == sorted([MiB] * 12 + [7])  # the limiter paces each buffer sent
    finally:
        up.close()
        store.close()


def test_a_file_that_shrinks_while_a_part_is_streamed_is_changed_and_its_upload_aborted(env):
    tmp, store, remote, up = env
    p = tmp / "big.bin"
    p.write_bytes(os.urandom(12 * MiB))
    job = job_for(p, "big.bin")
    register(store, job)
    real_part = remote.upload_part

    def truncate_then_send(key, uid, n, body, length, md5, checksum=None):
        if n == 3:
            os.truncate(p, 11 * MiB)  # after part 3's MD5 pass, before its bytes are sent
        return real_part(key, uid, n, body, length, md5, checksum)

    remote.upload_part = truncate_then_send
    o = up.upload(job)
    assert o.kind == "changed" and "shrank" in o.reason
    assert "big.bin" not in remote.objects and not remote.uploads  # aborted: nothing half-sent is kept
    assert store.get("big.bin").upload_id is None


def test_a_file_that_changed_after_it_was_found_stable_is_not_read(env):
    tmp, store, remote, up = env
    p = tmp / "a.bin"
    p.write_bytes(b"v1")
    job = job_for(p, "a.bin")
    p.write_bytes(b"v2 longer")
    assert up.upload(job).kind == "changed"
    assert remote.calls.get("put_object", 0) == 0


def test_a_vanished_file_and_a_fifo_swapped_in_are_handled_without_blocking(env):
    tmp, store, remote, up = env
    p = tmp / "gone.bin"
    p.write_bytes(b"x")
    job = job_for(p, "gone.bin")
    p.unlink()
    assert up.upload(job).kind == "vanished"
    os.mkfifo(p)  # a writer-less FIFO at the same path: opening must not hang
    assert up.upload(job).kind == "changed"


def test_a_symlink_swapped_in_is_refused_when_links_are_not_followed(env, tmp_path):
    tmp, store, remote, up = env
    p = tmp / "a.txt"
    p.write_bytes(b"x")
    job = job_for(p, "a.txt")
    p.unlink()
    secret = tmp_path / "secret"
    secret.write_bytes(b"x")
    os.symlink(secret, p)
    assert up.upload(job).kind == "changed"
    assert "a.txt" not in remote.objects


def test_server_errors_are_classified_failures(env):
    tmp, store, remote, up = env
    p = tmp / "a.bin"
    p.write_bytes(b"x")
    remote.exists = False
    o = up.upload(job_for(p, "a.bin"))
    assert o.kind == "failed" and o.failure.kind == "no_bucket"


def test_part_size_grows_to_stay_within_ten_thousand_parts():
    assert part_size_for(100 * MiB, 8 * MiB) == 8 * MiB
    size = 200 * 1024 * MiB  # 200 GiB
    ps = part_size_for(size, 8 * MiB)
    assert ps % MiB == 0 and -(-size // ps) <= 10000


SERIAL_SETTINGS = Settings(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=1,
                    put_options=PutOptions(), follow_symlinks=False)


class FlakyRemote(MemoryRemote):
    """A MemoryRemote whose next calls of an operation fail as scripted: ``fail[op] = [exc, ...]``.
    An exception with ``after = True`` fails after the call took effect (a lost answer)."""

    def __init__(self):
        super().__init__()
        self.fail: Dict[str, List[BaseException]] = {}

    def _maybe(self, op: str, call):
        script = self.fail.get(op)
        exc = script.pop(0) if script else None
        if exc is not None and not getattr(exc, "after", False):
            raise exc
        result = call()
        if exc is not None:
            raise exc
        return result

    def upload_part(self, *a, **kw):
        return self._maybe("upload_part", lambda: super(FlakyRemote, self).upload_part(*a, **kw))

    def complete_multipart(self, *a, **kw):
        return self._maybe("complete_multipart", lambda: super(FlakyRemote, self).complete_multipart(*a, **kw))

    def list_parts(self, *a, **kw):
        return self._maybe("list_parts", lambda: super(FlakyRemote, self).list_parts(*a, **kw))


def lost_answer() -> BaseException:
    exc = RemoteError("connection reset by peer", "ConnectionError", "network")
    exc.after = True  # type: ignore[attr-defined]
    return exc


@pytest.fixture
def flaky(tmp_path):
    store = Store(tmp_path / "s.db")
    remote = FlakyRemote()
    up = Uploader(remote, store, lambda: SERIAL_SETTINGS, part_workers=1)
    data = os.urandom(12 * MiB + 5)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    st = os.stat(path)
    store.discover_many([("big.bin", "big.bin", st.st_size, st.st_mtime_ns, st.st_ino)])
    yield store, remote, up, data, FileStat("big.bin", st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev), path
    up.close()
    store.close()


def attempt(store, up, fstat, path, n):
    """One attempt, as the daemon makes it: the job carries what the row records."""
    store.start_upload("big.bin", fstat.size, fstat.mtime_ns, fstat.ino)
    rec = store.get("big.bin")
    o = up.upload(Job("big.bin", str(path), "big.bin", fstat, n, rec.upload_id, rec.part_size))
    if o.kind == "failed":
        store.fail_upload("big.bin", o.failure.kind, o.failure.message, 0.0, park=False)
    return o


def test_an_upload_completed_just_before_its_answer_was_lost_is_recognised_and_not_sent_again(flaky):
    store, remote, up, data, fstat, path = flaky
    remote.fail["complete_multipart"] = [lost_answer()]
    assert attempt(store, up, fstat, path, 1).kind == "failed"
    assert remote.objects["big.bin"][0] == data  # S3 completed it; we never heard
    sent = remote.calls["upload_part"]
    o = attempt(store, up, fstat, path, 2)
    assert o.kind == "uploaded"
    assert remote.calls["upload_part"] == sent == 3  # nothing sent again
    assert remote.calls["head"] == 1 and store.get("big.bin").upload_id is None


def test_a_throttled_list_parts_keeps_the_upload_and_every_part_already_sent(flaky):
    from s3_uploader.remote import memory_error
    store, remote, up, data, fstat, path = flaky
    remote.fail["upload_part"] = [None, None, RemoteError("reset", "ConnectionError", "network")]  # parts 1 and 2 arrive
    assert attempt(store, up, fstat, path, 1).kind == "failed"
    remote.fail["list_parts"] = [memory_error("SlowDown", "Please reduce your request rate.")]
    o = attempt(store, up, fstat, path, 2)
    assert o.kind == "failed" and o.failure.kind == "throttled"
    rec = store.get("big.bin")
    assert rec.upload_id is not None and len(store.parts("big.bin", rec.upload_id)) == 2
    assert attempt(store, up, fstat, path, 3).kind == "uploaded"
    assert remote.calls["upload_part"] == 3  # 1 and 2 (part 3 never arrived), then only 3
    assert remote.calls["create_multipart"] == 1
    assert remote.objects["big.bin"][0] == data

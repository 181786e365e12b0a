"""What proves an upload: the pure rules (s3_uploader.proof, cleanup.etag_matches), and the uploader
on a MemoryRemote answering as a bucket with default SSE-KMS does.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from s3_uploader.cleanup import etag_matches
from s3_uploader.proof import etag_is_md5, multipart_problem, single_put_problem
from s3_uploader.remote import MemoryRemote, ObjectInfo, PutOptions, multipart_etag
from s3_uploader.scanner import FileStat
from s3_uploader.store import Record, Store
from s3_uploader.uploader import Job, Settings, Uploader

MiB = 1024 * 1024

MD5 = hashlib.md5(b"ours").hexdigest()

OTHER = hashlib.md5(b"other").hexdigest()


# -- the rules ------------------------------------------------------------------------------------

def test_only_kms_and_sse_c_objects_have_etags_that_are_not_their_md5():
    assert etag_is_md5(ObjectInfo("k", 1, MD5)) and etag_is_md5(ObjectInfo("k", 1, MD5, sse="AES256"))
    assert not etag_is_md5(ObjectInfo("k", 1, MD5, sse="aws:kms"))
    assert not etag_is_md5(ObjectInfo("k", 1, MD5, sse="aws:kms:dsse"))
    assert not etag_is_md5(ObjectInfo("k", 1, MD5, sse_customer="AES256"))


def test_a_single_put_whose_etag_is_not_the_md5_is_wrong_only_when_the_object_is_not_kms_encrypted():
    opaque = "a" * 32
    # KMS (what AWS answers for a bucket with default SSE-KMS): proven by the HEAD
    assert single_put_problem(ObjectInfo("k", 4, opaque, sse="aws:kms"), "k", 4, MD5, opaque) is None
    assert single_put_problem(ObjectInfo("k", 4, opaque, sse_customer="AES256"), "k", 4, MD5, opaque) is None
    # ...but it must be there, with the size sent, and be the object that PUT stored
    assert "does not show" in single_put_problem(None, "k", 4, MD5, opaque)
    assert "5 bytes" in single_put_problem(ObjectInfo("k", 5, opaque, sse="aws:kms"), "k", 4, MD5, opaque)
    assert "another object" in single_put_problem(ObjectInfo("k", 4, "b" * 32, sse="aws:kms"), "k", 4, MD5, opaque)
    # unencrypted or SSE-S3: an MD5-form ETag that is not ours is wrong bytes
    for sse in ("", "AES256"):
        assert "not the MD5 sent" in single_put_problem(ObjectInfo("k", 4, OTHER, sse=sse), "k", 4, MD5, OTHER)
    # a garbled answer, with the object's own ETag the MD5: proven
    assert single_put_problem(ObjectInfo("k", 4, MD5), "k", 4, MD5, "") is None


def test_a_multipart_object_is_proven_by_its_parts_and_its_head_and_wrong_parts_are_caught_unless_kms():
    expected = multipart_etag([hashlib.md5(b"a").digest(), hashlib.md5(b"b").digest()])
    whole = hashlib.md5(b"ab").hexdigest()
    assert multipart_problem(ObjectInfo("k", 2, expected), "k", 2, expected, expected) is None
    # rclone: Complete answers md5-N, HEAD and listings show the whole object's MD5
    assert multipart_problem(ObjectInfo("k", 2, whole), "k", 2, expected, expected) is None
    assert "another object" in multipart_problem(ObjectInfo("k", 2, "c" * 32 + "-2"), "k", 2, expected, expected)
    assert "3 bytes" in multipart_problem(ObjectInfo("k", 3, expected), "k", 2, expected, expected)
    kms = "d" * 32 + "-2"
    assert multipart_problem(ObjectInfo("k", 2, kms, sse="aws:kms"), "k", 2, expected, kms, [1, 2]) is None
    assert "parts 1, 2" in multipart_problem(ObjectInfo("k", 2, kms), "k", 2, expected, kms, [1, 2])


def _rec(md5, etag) -> Record:
    return Record(rel="a.bin", key="a.bin", state="uploaded", size=10, mtime_ns=5, inode=7, md5=md5, etag=etag,
                  uploaded_at=1.0)


def test_cleanup_proves_by_the_recorded_etag_or_md5_and_never_by_size_alone():
    opaque = "e" * 32
    assert etag_matches(_rec(MD5, opaque), opaque) is True  # KMS: the ETag recorded at upload
    assert etag_matches(_rec(MD5, opaque), MD5) is True
    assert etag_matches(_rec(MD5, opaque), "f" * 32) is False
    mp = "9" * 32 + "-3"
    # 8c: a multipart row listed with a plain ETag was size alone; now it is not proven
    assert etag_matches(_rec(None, mp), "f" * 32) is False
    assert etag_matches(_rec(None, "f" * 32), "f" * 32) is True  # the HEAD's ETag, recorded since
    assert etag_matches(_rec(None, mp), "") is None  # nothing listed to compare: the size decides


# -- the uploader on a KMS bucket, in memory ----------------------------------------------------------

@pytest.fixture
def kms_uploader(tmp_path):
    store = Store(tmp_path / "s.db")
    remote = MemoryRemote(sse="aws:kms")
    settings = Settings(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2,
                        put_options=PutOptions(), follow_symlinks=False)
    up = Uploader(remote, store, lambda: settings)
    yield tmp_path, store, remote, up
    up.close()
    store.close()


def _job(path, rel):
    st = os.stat(path)
    return Job(rel, str(path), rel, FileStat(rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev))


def test_on_a_kms_bucket_small_streamed_and_multipart_files_are_uploaded_with_one_head_and_nothing_deleted(
        kms_uploader):
    tmp, store, remote, up = kms_uploader
    for name, size in (("small.bin", 3000), ("streamed.bin", 2 * MiB), ("big.bin", 11 * MiB)):
        data = os.urandom(size)
        (tmp / name).write_bytes(data)
        job = _job(tmp / name, name)
        store.discover_many([(name, name, size, job.stat.mtime_ns, job.stat.ino)])
        store.start_upload(name, size, job.stat.mtime_ns, job.stat.ino)
        remote.calls.clear()
        o = up.upload(job)
        assert o.kind == "uploaded", o
        assert o.etag == remote.objects[name][1] and remote.objects[name][0] == data
        assert remote.calls.get("head") == 1 and "delete" not in remote.calls
        if name != "big.bin":
            assert o.md5 == hashlib.md5(data).hexdigest() != o.etag

"""Cleanup's proof by the checksum S3 stores (issue 14): the pure last step (checksum_decision), the
spelling a row records (stored_checksum, same_checksum), and one pass with the in-memory remote,
whose objects keep the checksum a PUT or a multipart upload sent (as AWS and SeaweedFS do)."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
from helpers import Clock

from s3_uploader.cleanup import (CHECKSUM_DIFFERS, CHECKSUM_MISSING, HEAD_FAILED, HOLD, OBJECT_MISSING, OK, REMOVE,
                                 REQUEUE, Cleaner, CleanupSettings, checksum_decision)
from s3_uploader.objects import ObjectAttributes, checksum_of
from s3_uploader.remote import MemoryRemote, ObjectInfo, PutOptions, same_checksum, stored_checksum
from s3_uploader.store import Record, Store

T0 = 1_800_000_000.0
DAY = 86400.0
CRC = "CRC32C:FULL_OBJECT:yZRlqg=="


def rec(**kw) -> Record:
    base = dict(rel="a.mp4", key="a.mp4", state="uploaded", size=10, mtime_ns=5, inode=7, md5="0" * 32,
                etag="0" * 32, uploaded_at=T0, checksum=CRC)
    base.update(kw)
    return Record(**base)


def head(checksum: str = CRC, size: int = 10) -> ObjectInfo:
    return ObjectInfo("a.mp4", size, "0" * 32, checksum=checksum)


# -- the pure core ---------------------------------------------------------------------------------------

def test_the_stored_checksum_is_spelled_with_its_algorithm_and_type_and_compared_without_a_missing_type():
    assert stored_checksum({"ETag": '"x"'}) == ""
    assert stored_checksum({"ChecksumCRC32C": "yZRlqg==", "ChecksumType": "FULL_OBJECT"}) == CRC
    assert stored_checksum({"ChecksumSHA256": "abc=-3", "ChecksumType": "COMPOSITE"}) == "SHA256:COMPOSITE:abc=-3"
    assert stored_checksum({"ChecksumCRC64NVME": "AAAAAAAAAAA="}) == "CRC64NVME::AAAAAAAAAAA="
    assert same_checksum(CRC, CRC) and same_checksum(CRC, "CRC32C::yZRlqg==")  # a server that leaves the type out
    assert not same_checksum(CRC, "CRC32C:FULL_OBJECT:AAAAAA==")
    assert not same_checksum(CRC, "CRC32C:COMPOSITE:yZRlqg==-2".replace("-2", ""))  # both say a type: it counts
    assert not same_checksum(CRC, "CRC64NVME:FULL_OBJECT:yZRlqg==") and not same_checksum(CRC, "")


@pytest.mark.parametrize("shown,action,reason", [
    (head(), REMOVE, OK),
    (head("CRC32C::yZRlqg=="), REMOVE, OK),
    (head("CRC32C:FULL_OBJECT:AAAAAA=="), REQUEUE, CHECKSUM_DIFFERS),  # replaced: uploaded again
    (head(""), HOLD, CHECKSUM_MISSING),  # shown at upload, not now: proves nothing, and no upload loop
    (None, REQUEUE, OBJECT_MISSING),  # deleted since the listing
])
def test_a_recorded_checksum_must_be_shown_again_before_the_file_goes(shown, action, reason):
    d = checksum_decision(rec(), shown)
    assert (d.action, d.reason) == (action, reason)


# -- one pass ----------------------------------------------------------------------------------------------

class World:
    def __init__(self, tmp: Path):
        self.root = tmp / "watch"
        self.root.mkdir()
        self.store = Store(tmp / "state.db", clock=Clock(T0))
        self.remote = MemoryRemote()
        self.requeued: list = []
        self.cleaner = Cleaner(self.root, self.store, self.remote, lambda: CleanupSettings(delete_after=DAY),
                               on_requeue=self.requeued.append)

    def file(self, rel: str, data: bytes, algorithm: str = "") -> None:
        """Write ``rel``, PUT it (with a checksum of ``algorithm``) and record what S3 answered."""
        p = self.root / rel
        p.write_bytes(data)
        st = os.lstat(p)
        self.store.discover(rel, rel, st.st_size, st.st_mtime_ns, st.st_ino)
        digest = hashlib.md5(data).digest()
        opts = PutOptions().for_object(ObjectAttributes("application/octet-stream", {}, checksum=algorithm),
                                       checksum_of(algorithm, data) if algorithm else "")
        etag, checksum = self.remote.put_object_answer(rel, data, len(data), digest, opts)
        self.store.start_upload(rel, st.st_size, st.st_mtime_ns, st.st_ino)
        self.store.finish_upload(rel, st.st_size, st.st_mtime_ns, st.st_ino, digest.hex(), etag, checksum or None)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()


def test_a_file_with_a_recorded_checksum_goes_after_one_head_shows_it_and_one_without_costs_no_head(world, caplog):
    world.file("sum.bin", b"s" * 100, "CRC32C")
    world.file("plain.bin", b"p" * 100)
    assert world.store.get("sum.bin").checksum == f"CRC32C:FULL_OBJECT:{checksum_of('CRC32C', b's' * 100)}"
    assert world.store.get("plain.bin").checksum is None
    with caplog.at_level(logging.DEBUG, logger="s3_uploader.cleanup"):
        res = world.cleaner.run_pass(T0 + DAY)
    assert res.freed_files == 2 and not (world.root / "sum.bin").exists()
    assert world.remote.calls.get("head_checksum") == 1 and world.remote.calls.get("head", 0) == 0
    assert "HEAD of sum.bin shows checksum CRC32C:FULL_OBJECT:" in caplog.text


def test_an_object_replaced_with_the_same_size_and_etag_but_another_checksum_is_not_deleted(world):
    """What only the checksum shows: the listing (size, ETag) still matches, as it does where the
    ETag cannot be compared (a server whose ETag is not the content's); the stored checksum differs."""
    world.file("cam.mp4", b"c" * 64, "SHA256")
    world.remote.checksums["cam.mp4"] = f"SHA256:FULL_OBJECT:{checksum_of('SHA256', b'x' * 64)}"
    res = world.cleaner.run_pass(T0 + DAY)
    assert res.freed_files == 0 and (world.root / "cam.mp4").read_bytes() == b"c" * 64
    assert world.store.get("cam.mp4").state == "pending" and world.requeued == ["cam.mp4"]
    assert res.held == {CHECKSUM_DIFFERS: 1}


def test_a_checksum_shown_at_upload_and_not_now_holds_the_file_without_uploading_it_again(world):
    world.file("cam.mp4", b"c" * 64, "CRC64NVME")
    del world.remote.checksums["cam.mp4"]
    res = world.cleaner.run_pass(T0 + DAY)
    assert res.freed_files == 0 and (world.root / "cam.mp4").exists()
    assert world.store.get("cam.mp4").state == "uploaded" and world.requeued == []
    assert res.held == {CHECKSUM_MISSING: 1}


def test_a_failed_head_holds_the_file_for_the_next_pass(world, monkeypatch):
    world.file("cam.mp4", b"c" * 64, "CRC32C")

    def refused(key):
        from s3_uploader.remote import memory_error
        raise memory_error("SlowDown")
    monkeypatch.setattr(world.remote, "head_checksum", refused)
    res = world.cleaner.run_pass(T0 + DAY)
    assert res.held == {HEAD_FAILED: 1} and (world.root / "cam.mp4").exists()

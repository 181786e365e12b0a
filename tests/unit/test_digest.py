"""cleanup.digest: what a file's bytes hash to, read through one descriptor, against what was recorded."""
from __future__ import annotations

import hashlib
import os
import threading

import pytest

from s3_uploader.cleanup.decision import BUSY, Keep
from s3_uploader.cleanup.digest import content_problem, digest, recorded_digest
from s3_uploader.remote import multipart_etag
from s3_uploader.store import Record

MIB = 1024 * 1024
DATA = os.urandom(2 * MIB + 123)  # three parts of 1 MiB


def row(**kw) -> Record:
    base = dict(rel="a.bin", key="a.bin", state="uploaded", size=len(DATA), mtime_ns=1, inode=1)
    base.update(kw)
    return Record(**base)


def parts_etag(data: bytes, part: int) -> str:
    return multipart_etag([hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part)])


@pytest.fixture
def fd(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(DATA)
    fd = os.open(p, os.O_RDONLY)
    yield fd
    os.close(fd)


def test_the_digest_of_a_file_is_its_md5_or_with_a_part_size_its_multipart_etag(fd):
    assert digest(fd, len(DATA), None, threading.Event()) == hashlib.md5(DATA).hexdigest()
    assert digest(fd, len(DATA), MIB, threading.Event()) == parts_etag(DATA, MIB)


def test_the_digest_copies_what_it_reads_and_is_none_for_a_file_shorter_than_asked(fd, tmp_path):
    out = os.open(tmp_path / "copy", os.O_WRONLY | os.O_CREAT)
    try:
        assert digest(fd, len(DATA), None, threading.Event(), out) == hashlib.md5(DATA).hexdigest()
    finally:
        os.close(out)
    assert (tmp_path / "copy").read_bytes() == DATA
    assert digest(fd, len(DATA) + 1, None, threading.Event()) is None


def test_a_stop_request_ends_the_digest_as_a_file_kept():
    stop = threading.Event()
    stop.set()
    with pytest.raises(Keep) as kept:
        digest(-1, 10, None, stop)
    assert kept.value.reason == BUSY


def test_the_recorded_digest_is_a_single_puts_md5_or_a_multipart_digest_whose_part_count_fits():
    md5 = hashlib.md5(DATA).hexdigest()
    assert recorded_digest(row(md5=md5), len(DATA), MIB) == (md5, None)
    etag = parts_etag(DATA, MIB)
    assert recorded_digest(row(md5=etag), len(DATA), MIB) == (etag, MIB)
    assert recorded_digest(row(etag=f'"{etag}"'), len(DATA), MIB) == (etag, MIB)  # rows from before md5 held it
    assert recorded_digest(row(md5=etag), len(DATA), 2 * MIB) is None  # 2 parts, not 3: the part size is unknown
    assert recorded_digest(row(), len(DATA), MIB) is None


def test_the_content_problem_names_other_bytes_and_nothing_when_they_are_the_ones_uploaded(fd):
    stop = threading.Event()
    assert content_problem(fd, row(md5=hashlib.md5(DATA).hexdigest()), MIB, stop) is None
    assert content_problem(fd, row(md5=parts_etag(DATA, MIB)), MIB, stop) is None
    assert "was uploaded" in (content_problem(fd, row(md5="0" * 32), MIB, stop) or "")
    assert content_problem(fd, row(md5="0" * 32, size=len(DATA) + 1), MIB, stop) == "shorter than recorded"
    assert content_problem(fd, row(), MIB, stop) is None  # nothing recorded: the signature alone decides

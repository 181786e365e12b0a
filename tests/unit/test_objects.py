"""What objects carry: the Content-Type table, rclone's mtime format, metadata and tags within S3's
limits, Object Lock, checksums, and the config keys that set them (every error names key and value)."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import timeit

import pytest

from s3_uploader import objects
from s3_uploader.config import ConfigError, parse_config
from s3_uploader.objects import (Checksum, ObjectPolicy, checksum_of, mtime_from_text, mtime_text, object_attributes,
                                 parse_content_types, parse_metadata, parse_tags)

MINIMAL = "[watch]\ndirectory_to_watch = /data\n[s3]\nbucket = b-1\n"


def config(**s3: str):
    return parse_config(MINIMAL + "".join(f"{k} = {v}\n" for k, v in s3.items()))


def config_errors(**s3: str) -> str:
    with pytest.raises(ConfigError) as ei:
        config(**s3)
    return "\n".join(ei.value.errors)


@pytest.mark.parametrize("rel,ctype", [
    ("cam/a.mp4", "video/mp4"), ("A.MOV", "video/quicktime"), ("x.avi", "video/x-msvideo"),
    ("x.mkv", "video/x-matroska"), ("x.ts", "video/mp2t"), ("p/x.JPG", "image/jpeg"), ("x.jpeg", "image/jpeg"),
    ("x.png", "image/png"), ("x.txt", "text/plain"), ("logs/x.log", "text/plain"), ("x.csv", "text/csv"),
    ("x.json", "application/json"), ("x.tar.gz", "application/gzip"), ("x.zip", "application/zip"),
    ("x.pdf", "application/pdf"), ("x.dat", "application/octet-stream"), ("x.bvr", "application/octet-stream"),
    ("noext", "application/octet-stream"), (".hidden", "application/octet-stream"),
    ("dir.mp4/file", "application/octet-stream"),
])
def test_the_content_type_comes_from_the_shipped_table_by_the_extension_in_any_case(rel, ctype):
    assert ObjectPolicy().content_type(rel) == ctype


def test_content_types_add_to_and_override_the_table_case_insensitively():
    cfg = config(content_types=".BVR=video/x-bvr, dat=application/x-bi-dat, .mp4=video/x-custom")
    assert cfg.s3.content_types == ((".bvr", "video/x-bvr"), (".dat", "application/x-bi-dat"),
                                    (".mp4", "video/x-custom"))
    policy = ObjectPolicy.from_config(cfg)
    assert policy.content_type("a/b.Bvr") == "video/x-bvr"
    assert policy.content_type("b.dat") == "application/x-bi-dat"
    assert policy.content_type("b.mp4") == "video/x-custom"
    assert policy.content_type("b.mov") == "video/quicktime"
    assert parse_content_types(".txt=text/plain; charset=utf-8") == ((".txt", "text/plain; charset=utf-8"),)


@pytest.mark.parametrize("ns,text", [(1_700_000_000_500_000_000, "1700000000.5"),
                                     (1_700_000_000_000_000_001, "1700000000.000000001"),
                                     (1_700_000_000_000_000_000, "1700000000"),
                                     (1_764_503_991_123_456_789, "1764503991.123456789"),
                                     (0, "0"), (-1_500_000_000, "-1.5")])
def test_the_mtime_is_written_as_rclone_writes_it_and_reads_back_to_the_nanosecond(ns, text):
    assert mtime_text(ns) == text
    assert mtime_from_text(text) == ns


def test_one_call_gives_every_attribute_a_file_is_sent_with():
    cfg = config(metadata="site={hostname}, Camera-Group=north", tags="retention=evidence, host={hostname}",
                 object_lock_mode="governance", object_lock_retain="30d", object_lock_legal_hold="true",
                 checksum_algorithm="sha256")
    host = objects.hostname()
    a = object_attributes(cfg, "cam/a.mp4", 1_700_000_000_250_000_000, now=1_800_000_000.0)
    assert a.content_type == "video/mp4"
    assert a.metadata == {"site": host, "camera-group": "north", "mtime": "1700000000.25"}
    assert a.tags == (("retention", "evidence"), ("host", host))
    assert a.tagging == f"retention=evidence&host={host}"
    assert a.lock_mode == "GOVERNANCE" and a.legal_hold
    assert a.retain_until == dt.datetime.fromtimestamp(1_800_000_000 + 30 * 86400, dt.timezone.utc)
    assert a.checksum == "SHA256" and not a.obstore_ok
    assert a.boto_args() == {"ContentType": "video/mp4", "Metadata": a.metadata, "Tagging": a.tagging,
                             "ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": a.retain_until,
                             "ObjectLockLegalHoldStatus": "ON"}


def test_by_default_an_object_carries_its_content_type_and_mtime_and_obstore_can_send_it():
    a = object_attributes(config(), "x.log", 5_000_000_000, now=0.0)
    assert a.boto_args() == {"ContentType": "text/plain", "Metadata": {"mtime": "5"}}
    assert a.obstore_attributes() == {"Content-Type": "text/plain", "mtime": "5"}
    assert a.obstore_ok and a.checksum == "" and a.retain_until is None


def test_tag_values_are_url_encoded_in_the_tagging_header():
    policy = ObjectPolicy(tags=(("case id", "a/b+c=d"), ("who", "x@y:z")), host="h")
    assert policy.tagging == "case%20id=a%2Fb%2Bc%3Dd&who=x%40y%3Az"


def test_the_policy_is_built_once_per_config_and_a_reload_builds_a_new_one():
    cfg = config(content_types=".bvr=video/x-bvr")
    assert object_attributes(cfg, "a.bvr", 0, 0.0).content_type == "video/x-bvr"
    first = objects._cached[1]
    object_attributes(cfg, "b.bvr", 0, 0.0)
    assert objects._cached[1] is first
    assert object_attributes(config(), "a.bvr", 0, 0.0).content_type == "application/octet-stream"


def test_a_files_attributes_cost_a_few_microseconds():
    """The small-file path pays this per 4 KiB upload: it must stay far below the request's cost."""
    cfg = config(metadata="site=x", tags="a=b")
    object_attributes(cfg, "a.jpg", 1, 0.0)
    n = 20000
    per_file = timeit.timeit(lambda: object_attributes(cfg, "cam/2026/a.jpg", 1_700_000_000_123_456_789, 0.0),
                             number=n) / n
    assert per_file < 20e-6, f"{per_file * 1e6:.1f} us per file"


@pytest.mark.parametrize("key,value,expected", [
    ("content_types", "bvr", "[s3] content_types = 'bvr': expected comma-separated extension=type pairs (bad item 'bvr')"),
    ("content_types", ".bvr=video", "bad type 'video'"),
    ("content_types", "a/b=video/x", "bad extension 'a/b'"),
    ("metadata", "site", "[s3] metadata = 'site': expected comma-separated name=value pairs"),
    ("metadata", "my name=x", "bad name 'my name'"),
    ("metadata", "mtime=1", "no 'mtime': it is set from each file's modification time"),
    ("metadata", "a=1, A=2", "each metadata name once ('a' twice)"),
    ("metadata", "a=caf\u00e9", "metadata values of printable ASCII (bad value for 'a')"),
    ("metadata", "a={site}", "only the placeholder {hostname}"),
    ("metadata", "a=" + "x" * 2030, "metadata within S3's 2048 bytes, 25 of them kept for mtime (this takes 2056)"),
    ("tags", ", ".join(f"k{i}=v" for i in range(11)), "at most 10 tags (S3's limit; 11 given)"),
    ("tags", "k" * 129 + "=v", "tag keys up to 128 and values up to 256 characters"),
    ("tags", "k=" + "v" * 257, "tag keys up to 128 and values up to 256 characters"),
    ("tags", "k=a;b", "tags of letters, digits, spaces and + - = . _ : / @ (bad tag 'k')"),
    ("tags", "aws:x=1", "no tag key starting with 'aws:'"),
    ("tags", "a=1, a=2", "each tag key once ('a' twice)"),
    ("object_lock_mode", "forever", "[s3] object_lock_mode = 'forever': expected one of (empty), 'governance'"),
    ("checksum_algorithm", "md5", "[s3] checksum_algorithm = 'md5': expected one of none, crc64nvme, crc32c, sha256"),
])
def test_a_bad_value_is_a_config_error_naming_the_key_the_value_and_what_was_expected(key, value, expected):
    assert expected in config_errors(**{key: value})


def test_tags_and_metadata_within_the_limits_are_accepted_as_written():
    tags = ", ".join(f"k{i}=v {i}" for i in range(10))
    assert len(parse_tags(tags)) == 10
    assert parse_tags("k" * 128 + "=" + "v" * 256 + ", \u00e9t\u00e9=caf\u00e9 +-=._:/@")
    assert parse_metadata("Site=North, a.b_c-d=x y") == (("site", "North"), ("a.b_c-d", "x y"))
    assert parse_metadata("a=" + "x" * 2022) == (("a", "x" * 2022),)


def test_a_lock_mode_needs_a_retention_and_a_retention_needs_a_mode():
    assert ("[s3] object_lock_retain: is required with object_lock_mode = compliance"
            in config_errors(object_lock_mode="compliance"))
    assert "[s3] object_lock_mode: is required with object_lock_retain = 86400s" in config_errors(
        object_lock_retain="1d")
    cfg = config(object_lock_mode="Compliance", object_lock_retain="7d")
    assert cfg.s3.object_lock_mode == "compliance" and cfg.s3.object_lock_retain == 7 * 86400


def test_every_key_here_applies_live_to_new_uploads():
    from s3_uploader.config import OPTIONS
    keys = {"content_types", "metadata", "tags", "object_lock_mode", "object_lock_retain", "object_lock_legal_hold",
            "checksum_algorithm"}
    assert {o.key for o in OPTIONS if o.section == "s3" and o.key in keys and o.reloadable} == keys


def test_checksums_are_the_values_s3_computes():
    data = b"hello world" * 100
    # the values SeaweedFS answered for these bytes (and AWS's published algorithms)
    assert checksum_of("SHA256", data) == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert checksum_of("CRC32C", data) == "CNb0NA=="
    assert checksum_of("CRC64NVME", data) == "3OGDuG9zPiw="
    assert Checksum("CRC32C").update(data[:7]).update(data[7:]).b64() == "CNb0NA=="


def test_check_refuses_a_lock_setting_on_a_bucket_without_object_lock_in_one_line():
    line = objects.lock_problem("compliance", False, bucket_lock_enabled=False)
    assert line is not None and "\n" not in line and "object_lock_mode = compliance" in line
    assert "object_lock_legal_hold = true" in (objects.lock_problem("", True, False) or "")
    assert objects.lock_problem("compliance", True, True) is None
    assert objects.lock_problem("", False, False) is None


# -- every upload path sends them (MemoryRemote checks checksums as S3 does) ----------------------

MiB = 1024 * 1024


@pytest.fixture
def paths(tmp_path):
    """An Uploader on MemoryRemote whose settings carry ``policy`` (set by the test), wall clock 1e9."""
    from s3_uploader.remote import MemoryRemote, PutOptions
    from s3_uploader.store import Store
    from s3_uploader.uploader import Settings, Uploader

    class World:
        policy = ObjectPolicy(metadata=(("site", "h"),), tags=(("k", "v"),), checksum="sha256", host="h")

        def settings(self):
            return Settings(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2,
                            put_options=PutOptions(storage_class="STANDARD_IA"), follow_symlinks=False,
                            objects=self.policy)

    w = World()
    w.tmp, w.store, w.remote = tmp_path, Store(tmp_path / "s.db"), MemoryRemote()
    w.up = Uploader(w.remote, w.store, w.settings, part_workers=2, wall=lambda: 1e9)
    yield w
    w.up.close()
    w.store.close()


def _job(w, rel: str, size: int, **kw):
    import os

    from s3_uploader.scanner import FileStat
    from s3_uploader.uploader import Job
    p = w.tmp / rel
    p.write_bytes(os.urandom(size))
    os.utime(p, ns=(1_700_000_000_500_000_000, 1_700_000_000_500_000_000))
    st = os.stat(p)
    job = Job(rel, str(p), rel, FileStat(rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev), **kw)
    w.store.discover_many([(rel, rel, st.st_size, st.st_mtime_ns, st.st_ino)])
    w.store.start_upload(rel, st.st_size, st.st_mtime_ns, st.st_ino)
    return job, p.read_bytes()


@pytest.mark.parametrize("checksum", ["none", "sha256", "crc32c", "crc64nvme"])
@pytest.mark.parametrize("rel,size", [("a.jpg", 4096), ("b.log", 2 * MiB), ("c.mp4", 11 * MiB + 3)])
def test_every_upload_path_sends_the_attributes_and_a_checksum_the_server_verifies(paths, rel, size, checksum):
    """One PUT from memory, a streamed PUT, a multipart upload (MemoryRemote refuses a wrong value)."""
    paths.policy = ObjectPolicy(content_types=((".log", "text/x-log"),), metadata=(("site", "{hostname}"),),
                                tags=(("k", "v"),), lock_mode="governance", lock_retain=86400, checksum=checksum,
                                host="h")
    job, data = _job(paths, rel, size)
    o = paths.up.upload(job)
    assert o.kind == "uploaded", o
    stored, _, opts = paths.remote.objects[rel]
    assert stored == data and opts.storage_class == "STANDARD_IA"
    a = opts.attrs
    assert a.content_type == {"a.jpg": "image/jpeg", "b.log": "text/x-log", "c.mp4": "video/mp4"}[rel]
    assert a.metadata == {"site": "h", "mtime": "1700000000.5"} and a.tagging == "k=v"
    assert a.retain_until == dt.datetime.fromtimestamp(1e9 + 86400, dt.timezone.utc)
    assert a.checksum == ("" if checksum == "none" else checksum.upper())
    if size < 5 * MiB:  # a single PUT carries its whole checksum (multipart: each part's, checked at Complete)
        assert opts.checksum == ("" if checksum == "none" else checksum_of(checksum.upper(), data))
    # what the server answered it stores is what the row will record (cleanup compares it): none when none sent
    assert o.checksum == (None if checksum == "none" else paths.remote.checksums[rel])
    if checksum == "sha256" and size >= 5 * MiB:  # multipart SHA-256 is composite: of the parts', "-N"
        assert o.checksum.startswith("SHA256:COMPOSITE:") and o.checksum.endswith("-3")
    elif checksum != "none":  # full-object: the whole file's value, on every path
        assert o.checksum == f"{checksum.upper()}:FULL_OBJECT:{checksum_of(checksum.upper(), data)}"


def test_a_resumed_upload_sends_every_parts_checksum_at_complete_the_earlier_ones_computed_again(paths):
    from s3_uploader.store import Part
    job, data = _job(paths, "big.mov", 15 * MiB)
    opts = paths.settings().put_options.for_object(paths.policy.attributes(job.rel, job.stat.mtime_ns, 1e9))
    uid = paths.remote.create_multipart("big.mov", opts)
    first = data[:5 * MiB]
    md5 = hashlib.md5(first).digest()
    etag = paths.remote.upload_part("big.mov", uid, 1, first, len(first), md5, ("SHA256", checksum_of("SHA256", first)))
    paths.store.set_multipart("big.mov", uid, 5 * MiB)
    paths.store.add_part("big.mov", uid, Part(1, 5 * MiB, etag, md5.hex()))
    paths.remote.calls.clear()
    o = paths.up.upload(job._replace(upload_id=uid, part_size=5 * MiB))
    assert o.kind == "uploaded", o
    assert paths.remote.calls["upload_part"] == 2 and paths.remote.objects["big.mov"][0] == data


def test_a_resumed_upload_the_server_no_longer_takes_is_aborted_and_the_next_attempt_starts_over(paths):
    """Created before checksum_algorithm was set: Complete is refused, the upload aborted, then a new one."""
    from s3_uploader.remote import PutOptions
    from s3_uploader.store import Part
    job, data = _job(paths, "big.mov", 11 * MiB)
    uid = paths.remote.create_multipart("big.mov", PutOptions())
    first = data[:5 * MiB]
    md5 = hashlib.md5(first).digest()
    etag = paths.remote.upload_part("big.mov", uid, 1, first, len(first), md5)
    paths.store.set_multipart("big.mov", uid, 5 * MiB)
    paths.store.add_part("big.mov", uid, Part(1, 5 * MiB, etag, md5.hex()))
    o = paths.up.upload(job._replace(upload_id=uid, part_size=5 * MiB))
    assert o.kind == "failed" and uid not in paths.remote.uploads
    assert paths.store.get("big.mov").upload_id is None
    assert paths.up.upload(job).kind == "uploaded" and paths.remote.objects["big.mov"][0] == data


def test_obstore_takes_only_what_it_can_send_whole():
    assert ObjectPolicy(metadata=(("a", "b"),), tags=(("k", "v"),), host="h").obstore_ok
    assert not ObjectPolicy(lock_mode="compliance", lock_retain=1, host="h").obstore_ok
    assert not ObjectPolicy(legal_hold=True, host="h").obstore_ok
    assert not ObjectPolicy(checksum="sha256", host="h").obstore_ok


def test_the_scheduler_hands_the_obstore_sender_only_files_whose_attributes_it_can_send(tmp_path):
    """A lock or a checksum keeps small files on the upload workers (boto3), which send them."""
    import os

    from s3_uploader.remote import PutOptions
    from s3_uploader.scanner import FileStat
    from s3_uploader.handover import fits_sender
    from s3_uploader.uploader import Job, Settings

    p = tmp_path / "a.jpg"
    p.write_bytes(b"x" * 100)
    st = os.stat(p)
    job = Job("a.jpg", str(p), "a.jpg", FileStat("a.jpg", st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev))

    def sendable(policy: ObjectPolicy) -> bool:
        settings = Settings(5 * MiB, 5 * MiB, 1, PutOptions(), False, policy)
        return fits_sender(job, settings, lambda key: True)

    assert sendable(ObjectPolicy(metadata=(("a", "b"),), tags=(("k", "v"),), host="h"))
    assert not sendable(ObjectPolicy(lock_mode="governance", lock_retain=60, host="h"))
    assert not sendable(ObjectPolicy(checksum="sha256", host="h"))

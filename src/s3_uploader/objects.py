"""What an object carries besides its bytes: Content-Type, the file's mtime, metadata, tags, Object
Lock and a stored checksum. Pure (no I/O but ``socket.gethostname``, for ``{hostname}``), except the
last two functions, which ask the bucket for ``check`` and ``ls``.

Two halves. The ``[s3]`` values are parsed and checked here (:func:`parse_content_types`,
:func:`parse_metadata`, :func:`parse_tags`, :func:`parse_checksum`, :func:`cross_checks`), each
raising ValueError with the phrase the config error ends with ("expected ..."). And
:class:`ObjectPolicy`, built once per configuration, turns one file into the
:class:`ObjectAttributes` every upload path sends (:func:`object_attributes` is the one entry point):
a dict lookup for the Content-Type, the mtime formatted, a copy of a small dict; everything else is
decided when the policy is built, so a 4 KiB upload pays a few microseconds for it.

Formats (the contract of the config keys, see docs/configuration.md):

- Content-Type comes from :data:`CONTENT_TYPES`, a table shipped here (not the platform's
  ``mimetypes``, whose answers differ between machines), by the lower-cased extension of the file's
  name; ``[s3] content_types = .bvr=video/x-bvr`` adds or overrides entries; anything else is
  ``application/octet-stream``.
- The mtime is the user metadata ``mtime``: seconds since the epoch as a decimal, its fraction to
  the nanosecond without trailing zeros (no point when it is whole), exactly as rclone writes and
  reads it (``X-Amz-Meta-Mtime``), so either tool reads the other's objects.
- ``metadata`` and ``tags`` are ``key=value, key=value``; both take ``{hostname}``. Tags are sent with
  the PUT and with CreateMultipartUpload (``x-amz-tagging``), so a multipart object keeps them.
- Object Lock: mode (GOVERNANCE or COMPLIANCE), retain-until = upload time + ``object_lock_retain``,
  legal hold ON when asked.
- ``checksum_algorithm``: the algorithm whose full-object value S3 verifies and stores; the value
  itself is computed from the bytes sent (:func:`checksum_of`) and sent as a header, never as an
  aws-chunked trailer (see docs/how-it-works.md, "What an object carries").
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import socket
from typing import TYPE_CHECKING, Any, Dict, Iterable, NamedTuple, Optional, Tuple
from urllib.parse import quote

if TYPE_CHECKING:
    from .config import Config

DEFAULT_TYPE = "application/octet-stream"

# Extension (lower case, with its dot) -> Content-Type. The camera and log types first.
CONTENT_TYPES: Dict[str, str] = {
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".avi": "video/x-msvideo",
    ".mkv": "video/x-matroska", ".ts": "video/mp2t", ".m2ts": "video/mp2t", ".mts": "video/mp2t",
    ".webm": "video/webm", ".3gp": "video/3gpp", ".mpg": "video/mpeg", ".mpeg": "video/mpeg",
    ".h264": "video/h264", ".h265": "video/h265", ".flv": "video/x-flv", ".wmv": "video/x-ms-wmv",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
    ".webp": "image/webp", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
    ".heic": "image/heic", ".svg": "image/svg+xml",
    ".wav": "audio/wav", ".mp3": "audio/mpeg", ".aac": "audio/aac", ".m4a": "audio/mp4", ".ogg": "audio/ogg",
    ".txt": "text/plain", ".log": "text/plain", ".csv": "text/csv", ".tsv": "text/tab-separated-values",
    ".html": "text/html", ".htm": "text/html", ".xml": "application/xml", ".md": "text/markdown",
    ".json": "application/json", ".jsonl": "application/x-ndjson", ".ndjson": "application/x-ndjson",
    ".yaml": "application/yaml", ".yml": "application/yaml",
    ".gz": "application/gzip", ".tgz": "application/gzip", ".zip": "application/zip",
    ".bz2": "application/x-bzip2", ".xz": "application/x-xz", ".zst": "application/zstd",
    ".tar": "application/x-tar", ".7z": "application/x-7z-compressed",
    ".pdf": "application/pdf", ".sqlite": "application/vnd.sqlite3", ".db": "application/vnd.sqlite3",
}

# S3's limits (PutObject, tagging)
MAX_TAGS = 10
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
METADATA_BUDGET = 2048  # bytes of user metadata: every name and value, UTF-8
MTIME = "mtime"
_MTIME_ROOM = len(MTIME) + 20  # "1764503991.123456789": what our own mtime can take of the budget

CHECKSUMS = ("none", "crc64nvme", "crc32c", "sha256")

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=({_TOKEN}|\"[^\"\\]*\"))*$")
_EXTENSION = re.compile(r"^\.?[^./\\\s]+$")
_META_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_META_VALUE = re.compile(r"^[\x20-\x7e]*$")
_TAG_PUNCT = set(" +-=._:/@")


def hostname() -> str:
    """The short host name ``{hostname}`` stands for (as in ``prefix``, see keys.KeyMaker)."""
    return socket.gethostname().split(".")[0]


def _pairs(text: str, what: str) -> Tuple[Tuple[str, str], ...]:
    """``key=value, key=value`` as pairs, in order; empty items dropped."""
    out = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"comma-separated {what} pairs (bad item {item.strip()!r})")
        out.append((key.strip(), value.strip()))
    return tuple(out)


def _fill(template: str, host: str) -> str:
    """``template`` with ``{hostname}`` filled in; ValueError on any other brace."""
    filled = template.replace("{hostname}", host)
    if "{" in filled or "}" in filled:
        raise ValueError(f"only the placeholder {{hostname}} (in {template!r})")
    return filled


def parse_content_types(text: str) -> Tuple[Tuple[str, str], ...]:
    """``.bvr=video/x-bvr, .dat=application/x-bi-dat`` as (extension, type) pairs, each extension
    lower-cased with its dot; raises ValueError."""
    out = []
    for ext, ctype in _pairs(text, "extension=type"):
        if not _EXTENSION.match(ext):
            raise ValueError(f"extension=type pairs with an extension like .bvr (bad extension {ext!r})")
        if not _MEDIA_TYPE.match(ctype):
            raise ValueError(f"extension=type pairs with a media type like video/x-bvr (bad type {ctype!r})")
        out.append(("." + ext.lstrip(".").lower(), ctype))
    return tuple(out)


def parse_metadata(text: str) -> Tuple[Tuple[str, str], ...]:
    """User metadata ``name=value, ...`` (names lower-cased: S3 stores them so). Checked with
    ``{hostname}`` filled in: names of letters, digits, ``-``, ``_``, ``.``; values printable ASCII
    (they travel as HTTP headers); ``mtime`` is ours; all within S3's 2 KB, leaving room for mtime."""
    pairs = tuple((k.lower(), v) for k, v in _pairs(text, "name=value"))
    host = hostname()
    seen = set()
    used = _MTIME_ROOM
    for name, value in pairs:
        filled = _fill(value, host)
        if not _META_NAME.match(name):
            raise ValueError(f"metadata names of letters, digits, '-', '_' and '.' (bad name {name!r})")
        if name == MTIME:
            raise ValueError("no 'mtime': it is set from each file's modification time")
        if name in seen:
            raise ValueError(f"each metadata name once ({name!r} twice)")
        if not _META_VALUE.match(filled):
            raise ValueError(f"metadata values of printable ASCII (bad value for {name!r})")
        seen.add(name)
        used += len(name) + len(filled)
    if used > METADATA_BUDGET:
        raise ValueError(f"metadata within S3's {METADATA_BUDGET} bytes, {_MTIME_ROOM} of them kept for mtime "
                         f"(this takes {used})")
    return pairs


def _tag_text_ok(text: str) -> bool:
    return all(c.isalnum() or c in _TAG_PUNCT for c in text)


def parse_tags(text: str) -> Tuple[Tuple[str, str], ...]:
    """Object tags ``key=value, ...``, checked with ``{hostname}`` filled in against S3's rules: at
    most 10, keys of 1 to 128 characters, values up to 256, letters, digits, spaces and ``+ - = . _
    : / @`` only, no key twice, none starting with ``aws:``."""
    pairs = _pairs(text, "key=value")
    if len(pairs) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags (S3's limit; {len(pairs)} given)")
    host = hostname()
    seen = set()
    for key, value in pairs:
        key_f, value_f = _fill(key, host), _fill(value, host)
        if len(key_f) > MAX_TAG_KEY or len(value_f) > MAX_TAG_VALUE:
            raise ValueError(f"tag keys up to {MAX_TAG_KEY} and values up to {MAX_TAG_VALUE} characters "
                             f"(tag {key!r} is {len(key_f)} and {len(value_f)})")
        if not (_tag_text_ok(key_f) and _tag_text_ok(value_f)):
            raise ValueError(f"tags of letters, digits, spaces and + - = . _ : / @ (bad tag {key!r})")
        if key_f.lower().startswith("aws:"):
            raise ValueError(f"no tag key starting with 'aws:' (reserved by AWS: {key!r})")
        if key_f in seen:
            raise ValueError(f"each tag key once ({key!r} twice)")
        seen.add(key_f)
    return pairs


def parse_checksum(text: str) -> str:
    """One of :data:`CHECKSUMS`; the CRCs need the ``awscrt`` package (botocore's own choice)."""
    t = text.strip().lower()
    if t not in CHECKSUMS:
        raise ValueError("one of " + ", ".join(CHECKSUMS))
    if t.startswith("crc"):
        try:
            import awscrt.checksums  # noqa: F401
        except ImportError:
            raise ValueError(f"{t} with the awscrt package installed (pip install awscrt), "
                             "or sha256 or none") from None
    return t


def cross_checks(values: Dict[Tuple[str, str], Any]) -> Iterable[str]:
    """The rules across ``[s3]`` keys of this module: a lock mode needs a retention and the reverse."""
    mode, retain = values.get(("s3", "object_lock_mode")), values.get(("s3", "object_lock_retain"))
    if mode and retain == 0:
        yield (f"[s3] object_lock_retain: is required with object_lock_mode = {mode} "
               "(expected a duration, e.g. 30d)")
    if retain and mode == "":
        yield (f"[s3] object_lock_mode: is required with object_lock_retain = {retain:g}s "
               "(expected governance or compliance)")


def mtime_text(mtime_ns: int) -> str:
    """rclone's format (swift.TimeToFloatString): ``1700000000.5``, ``1700000000.000000001``,
    ``1700000000``; exact to the nanosecond."""
    sign = "-" if mtime_ns < 0 else ""
    secs, frac = divmod(abs(mtime_ns), 1_000_000_000)
    if not frac:
        return f"{sign}{secs}"
    return f"{sign}{secs}." + f"{frac:09d}".rstrip("0")


def mtime_from_text(text: str) -> int:
    """Nanoseconds since the epoch from :func:`mtime_text`'s format (rclone's); raises ValueError."""
    m = re.match(r"^(-?)(\d+)(?:\.(\d{1,9})\d*)?$", text.strip())
    if not m:
        raise ValueError(f"not an mtime: {text!r}")
    ns = int(m.group(2)) * 1_000_000_000 + int((m.group(3) or "").ljust(9, "0"))
    return -ns if m.group(1) else ns


class ObjectAttributes(NamedTuple):
    """What one object is sent with (a NamedTuple: one per file, cheap to build).

    ``metadata`` includes ``mtime``; ``tagging`` is the URL-encoded ``x-amz-tagging`` value ('' none);
    ``lock_mode`` is GOVERNANCE, COMPLIANCE or ''; ``retain_until`` is when ('' mode: None);
    ``checksum`` is the algorithm's name as S3 spells it (CRC64NVME, CRC32C, SHA256) or ''.
    """

    content_type: str
    metadata: Dict[str, str]
    tagging: str = ""
    tags: Tuple[Tuple[str, str], ...] = ()
    lock_mode: str = ""
    retain_until: Optional[dt.datetime] = None
    legal_hold: bool = False
    checksum: str = ""

    def boto_args(self) -> Dict[str, Any]:
        """Keyword arguments for boto3's PutObject and CreateMultipartUpload (the checksum value is
        the remote's: it is computed from the bytes, see :func:`checksum_of`)."""
        out: Dict[str, Any] = {"ContentType": self.content_type, "Metadata": self.metadata}
        if self.tagging:
            out["Tagging"] = self.tagging
        if self.lock_mode:
            out["ObjectLockMode"] = self.lock_mode
            out["ObjectLockRetainUntilDate"] = self.retain_until
        if self.legal_hold:
            out["ObjectLockLegalHoldStatus"] = "ON"
        return out

    def obstore_attributes(self) -> Dict[str, str]:
        """obstore's ``attributes``: Content-Type, and any other name is user metadata."""
        out = {"Content-Type": self.content_type}
        out.update(self.metadata)
        return out

    @property
    def obstore_ok(self) -> bool:
        """Whether obstore can send all of it: not Object Lock, not a checksum (it sends neither)."""
        return not (self.lock_mode or self.legal_hold or self.checksum)


class ObjectPolicy:
    """The attributes a configuration gives every object, decided once (see the module docstring).

    ``attributes(rel, mtime_ns, now)``: given a file's path relative to the watched root (``/``
    separated), its mtime in nanoseconds and the upload's start (epoch seconds), returns its
    :class:`ObjectAttributes`.
    """

    def __init__(self, content_types: Iterable[Tuple[str, str]] = (), metadata: Iterable[Tuple[str, str]] = (),
                 tags: Iterable[Tuple[str, str]] = (), lock_mode: str = "", lock_retain: float = 0.0,
                 legal_hold: bool = False, checksum: str = "none", host: Optional[str] = None):
        host = hostname() if host is None else host
        self.types = dict(CONTENT_TYPES)
        self.types.update(content_types)
        self.metadata = {k: _fill(v, host) for k, v in metadata}
        self.tags = tuple((_fill(k, host), _fill(v, host)) for k, v in tags)
        self.tagging = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in self.tags)
        self.lock_mode = lock_mode.upper()
        self.lock_retain = dt.timedelta(seconds=lock_retain)
        self.legal_hold = legal_hold
        self.checksum = "" if checksum == "none" else checksum.upper()
        # whether every object of this policy can go by obstore (the scheduler's routing)
        self.obstore_ok = self.attributes("", 0, 0.0).obstore_ok

    @classmethod
    def from_config(cls, cfg: "Config") -> "ObjectPolicy":
        s = cfg.s3
        return cls(s.content_types, s.metadata, s.tags, s.object_lock_mode, s.object_lock_retain,
                   s.object_lock_legal_hold, s.checksum_algorithm)

    def content_type(self, rel: str) -> str:
        name = rel[rel.rfind("/") + 1:]
        dot = name.rfind(".")
        if dot <= 0:  # no extension, or a dot file's name
            return DEFAULT_TYPE
        return self.types.get(name[dot:].lower(), DEFAULT_TYPE)

    def attributes(self, rel: str, mtime_ns: int, now: float) -> ObjectAttributes:
        metadata = dict(self.metadata)
        metadata[MTIME] = mtime_text(mtime_ns)
        until = None
        if self.lock_mode:
            until = dt.datetime.fromtimestamp(now, dt.timezone.utc) + self.lock_retain
        return ObjectAttributes(self.content_type(rel), metadata, self.tagging, self.tags, self.lock_mode, until,
                                self.legal_hold, self.checksum)


_cached: Tuple[Any, Optional[ObjectPolicy]] = (None, None)


def object_attributes(cfg: "Config", rel: str, mtime_ns: int, now: float) -> ObjectAttributes:
    """The attributes every upload path sends for the file ``rel`` (mtime ``mtime_ns``) uploaded at
    ``now``, under ``cfg``. The policy is built once per Config object (a reload makes a new one)."""
    global _cached
    holder, policy = _cached
    if holder is not cfg or policy is None:
        policy = ObjectPolicy.from_config(cfg)
        _cached = (cfg, policy)
    return policy.attributes(rel, mtime_ns, now)


def checksum_of(algorithm: str, data: bytes) -> str:
    """The base64 value of ``algorithm`` (CRC64NVME, CRC32C or SHA256) over ``data``, as S3's
    ``x-amz-checksum-*`` headers carry it."""
    return Checksum(algorithm).update(data).b64()


class Checksum:
    """An incremental ``algorithm`` (CRC64NVME, CRC32C or SHA256) over bytes fed in order."""

    def __init__(self, algorithm: str):
        self.algorithm = algorithm
        self._sha = hashlib.sha256() if algorithm == "SHA256" else None
        self._crc = 0
        if self._sha is None:
            from awscrt import checksums  # checked at config time (parse_checksum)
            self._fn = checksums.crc64nvme if algorithm == "CRC64NVME" else checksums.crc32c

    def update(self, data: bytes) -> "Checksum":
        if self._sha is not None:
            self._sha.update(data)
        else:
            self._crc = self._fn(data, self._crc)
        return self

    def digest(self) -> bytes:
        if self._sha is not None:
            return self._sha.digest()
        return self._crc.to_bytes(8 if self.algorithm == "CRC64NVME" else 4, "big")

    def b64(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")


def lock_problem(mode: str, legal_hold: bool, bucket_lock_enabled: bool) -> Optional[str]:
    """``check``'s verdict on a lock setting: one line when the bucket cannot take it, else None."""
    if (mode or legal_hold) and not bucket_lock_enabled:
        what = f"object_lock_mode = {mode}" if mode else "object_lock_legal_hold = true"
        return (f"[s3] {what}, but the bucket has no Object Lock (it can only be enabled on a bucket made "
                "with it, or by AWS support): remove the lock settings or use a bucket with Object Lock")
    return None


# ------------------------------------------------------------------------------------------------
# Asking the bucket: check and ls
# ------------------------------------------------------------------------------------------------

def check_object_lock(client: Any, bucket: str, mode: str, legal_hold: bool) -> Tuple[str, bool]:
    """``check``'s line on Object Lock (GetObjectLockConfiguration), and whether the configuration
    must be refused: a lock setting on a bucket without Object Lock. A bucket whose answer cannot be
    read (no permission, a server without the call) is said so, not refused."""
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        r = client.get_object_lock_configuration(Bucket=bucket)
        enabled = r.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code != "ObjectLockConfigurationNotFoundError":
            return f"Object Lock: cannot tell whether the bucket has it ({code or exc})", False
        enabled = False
    except BotoCoreError as exc:
        return f"Object Lock: cannot tell whether the bucket has it ({' '.join(str(exc).split())})", False
    problem = lock_problem(mode, legal_hold, enabled)
    if problem is not None:
        return problem, True
    wanted = f", new objects locked: {mode} " if mode else ""
    return f"Object Lock: {'enabled' if enabled else 'not enabled'} on the bucket{wanted}".rstrip(), False


def describe_objects(client: Any, bucket: str, prefix: str, long: bool = False,
                     workers: int = 8) -> Iterable[Dict[str, Any]]:
    """Each object under ``prefix``, in key order, as a dict: key, size, last_modified (datetime),
    etag, content_type, and with ``long`` metadata, tags, lock and checksum. A listing does not carry
    these: each object costs a HEAD (and with ``long`` a GetObjectTagging), ``workers`` at a time.
    What a server cannot say is None (an object deleted meanwhile; tags on a server without them)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(o: Dict[str, Any]) -> Dict[str, Any]:
        row: Dict[str, Any] = {"key": o["Key"], "size": int(o["Size"]), "last_modified": o.get("LastModified"),
                               "etag": str(o.get("ETag", "")).strip('"'), "content_type": None}
        try:
            h = client.head_object(Bucket=bucket, Key=o["Key"], **({"ChecksumMode": "ENABLED"} if long else {}))
        except Exception:  # noqa: BLE001 - gone since the listing, or unreadable: shown as unknown
            h = None
        if h is not None:
            row["content_type"] = h.get("ContentType")
        if long:
            row["metadata"] = h.get("Metadata") if h is not None else None
            try:
                tags = client.get_object_tagging(Bucket=bucket, Key=o["Key"]).get("TagSet", [])
                row["tags"] = {t["Key"]: t["Value"] for t in tags}
            except Exception:  # noqa: BLE001 - e.g. a server without tagging
                row["tags"] = None
            h = h or {}
            until = h.get("ObjectLockRetainUntilDate")
            row["lock"] = {"mode": h.get("ObjectLockMode"), "retain_until": until.isoformat() if until else None,
                           "legal_hold": h.get("ObjectLockLegalHoldStatus") == "ON"}
            row["checksum"] = {k[len("Checksum"):]: v for k, v in h.items()
                               if k.startswith("Checksum") and k != "ChecksumType" and v} or None
        return row

    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="ls") as pool:
        for page in pages:
            yield from pool.map(one, page.get("Contents", ()))

"""A bucket in memory, for tests: S3's ETag rules, Content-MD5 checks, and faults on demand.

It raises :class:`~.errors.RemoteError` itself, built as S3's answer would be read
(:func:`memory_error`), so code above it meets the same errors as from the real remotes.
"""
from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from ..objects import checksum_of
from .base import MultipartUpload, ObjectInfo, PartChecksum, PutOptions, Remote, multipart_etag
from .errors import RemoteError, s3_error

# the HTTP status S3 answers each error code the memory remote raises with
_STATUS = {"SlowDown": 503, "InternalError": 500, "NoSuchBucket": 404, "NoSuchUpload": 404, "NotImplemented": 501,
           "AccessDenied": 403}


def memory_error(code: str, message: str = "") -> RemoteError:
    """The RemoteError S3 would give for ``code`` (its HTTP status as S3 answers it, 400 by default)."""
    return s3_error(code, f"{code}: {message}" if message else code, _STATUS.get(code, 400))


@dataclass
class _MemUpload:
    key: str
    opts: PutOptions
    parts: Dict[int, Tuple[bytes, str]] = field(default_factory=dict)
    initiated: float = field(default_factory=time.time)


class MemoryRemote(Remote):
    """A bucket in a dict, with S3's ETag rules and Content-MD5 checks. Thread-safe.

    ``calls`` counts requests by operation name, so tests can assert how many were made. ``sse``
    is the bucket's default encryption: with ``aws:kms`` every object is stored as AWS stores a
    KMS-encrypted one, its ETags (object and parts) random rather than MD5s, and HEAD says so.

    Faults, for tests: :meth:`fail` makes every request that writes an object (PUT, the multipart
    steps) and every listing fail as S3 would (throttled, a 5xx, or a permanent error), for one key
    or for all; ``fail(None)`` clears them. Reads that prove an object (HEAD) and deletes never fail.
    """

    # fault mode -> the S3 error code it raises (kind as the real one's: see errors.kind_of_code)
    FAULTS = {"throttled": "SlowDown", "server": "InternalError", "permanent": "InvalidArgument"}

    def __init__(self, bucket: str = "memory-bucket", exists: bool = True, sse: str = ""):
        self.bucket = bucket
        self.exists = exists
        self.sse = sse
        self.objects: Dict[str, Tuple[bytes, str, PutOptions]] = {}
        # key -> the checksum stored with the object (base.stored_checksum's spelling), when it has one
        self.checksums: Dict[str, str] = {}
        self.uploads: Dict[str, _MemUpload] = {}
        self.calls: Dict[str, int] = {}
        self._lock = threading.Lock()
        self._seq = 0
        self._fault_all: Optional[str] = None
        self._fault_keys: Dict[str, str] = {}

    def fail(self, mode: Optional[str], key: Optional[str] = None) -> None:
        """From now on, requests that write ``key`` (every key when None) or list its folder fail
        with ``mode`` (a key of :data:`FAULTS`); ``mode`` None clears that fault (all of them when
        ``key`` is None too)."""
        if mode is not None and mode not in self.FAULTS:
            raise ValueError(f"unknown fault {mode!r}; expected one of {sorted(self.FAULTS)}")
        with self._lock:
            if key is None:
                self._fault_all = mode
                if mode is None:
                    self._fault_keys.clear()
            elif mode is None:
                self._fault_keys.pop(key, None)
            else:
                self._fault_keys[key] = mode

    def _count(self, op: str, key: Optional[str] = None) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        if not self.exists and op != "check_access":
            raise memory_error("NoSuchBucket", "The specified bucket does not exist")
        if op in ("head", "head_checksum", "delete", "check_access", "abort_multipart", "list_multipart_uploads"):
            return
        mode = self._fault_keys.get(key or "") or self._fault_all
        if op == "list_folder" and mode is None:
            mode = next((m for k, m in self._fault_keys.items() if k[:k.rfind("/") + 1] == key), None)
        if mode is not None:
            raise memory_error(self.FAULTS[mode], f"injected {mode} fault")

    @staticmethod
    def _read(body: Any, length: int) -> bytes:
        data = bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else body.read(length)
        return data

    def check_access(self) -> None:
        with self._lock:
            self._count("check_access")
            if not self.exists:
                raise RemoteError("no such bucket", "NoSuchBucket", "no_bucket", status=404)

    def put_object(self, key: str, body: Any, length: int, md5: bytes, opts: PutOptions) -> str:
        return self.put_object_answer(key, body, length, md5, opts)[0]

    def put_object_answer(self, key: str, body: Any, length: int, md5: bytes, opts: PutOptions) -> Tuple[str, str]:
        """As AWS: a PUT that sent a checksum stores it (a full-object one) and answers it."""
        with self._lock:
            self._count("put_object", key)
        data = self._read(body, length)
        if hashlib.md5(data).digest() != md5:
            raise memory_error("BadDigest", "The Content-MD5 you specified did not match what we received.")
        if opts.checksum and opts.attrs is not None and checksum_of(opts.attrs.checksum, data) != opts.checksum:
            raise memory_error("BadDigest", "The checksum you specified did not match what we received.")
        etag = self._etag(hashlib.md5(data).hexdigest())
        checksum = f"{opts.attrs.checksum}:FULL_OBJECT:{opts.checksum}" if opts.checksum and opts.attrs else ""
        with self._lock:
            self.objects[key] = (data, etag, opts)
            self._set_checksum(key, checksum)
        return etag, checksum

    def _set_checksum(self, key: str, checksum: str) -> None:
        if checksum:
            self.checksums[key] = checksum
        else:
            self.checksums.pop(key, None)

    def _etag(self, md5: str) -> str:
        """The ETag S3 gives bytes with MD5 ``md5``: the MD5, or with KMS an opaque value."""
        return hashlib.md5(os.urandom(16)).hexdigest() if self.sse.startswith("aws:kms") else md5

    def head(self, key: str) -> Optional[ObjectInfo]:
        with self._lock:
            self._count("head")
            o = self.objects.get(key)
        return ObjectInfo(key, len(o[0]), o[1], sse=self.sse) if o else None

    def head_checksum(self, key: str) -> Optional[ObjectInfo]:
        with self._lock:
            self._count("head_checksum")
            o = self.objects.get(key)
            checksum = self.checksums.get(key, "")
        return ObjectInfo(key, len(o[0]), o[1], sse=self.sse, checksum=checksum) if o else None

    def list_folder(self, folder: str) -> Iterator[ObjectInfo]:
        with self._lock:
            self._count("list_folder", folder)
            items = sorted((k, v) for k, v in self.objects.items() if k.startswith(folder) and "/" not in k[len(folder):])
        for k, (data, etag, _) in items:
            yield ObjectInfo(k, len(data), etag)

    def delete(self, key: str) -> None:
        with self._lock:
            self._count("delete")
            self.objects.pop(key, None)
            self.checksums.pop(key, None)

    def create_multipart(self, key: str, opts: PutOptions) -> str:
        with self._lock:
            self._count("create_multipart", key)
            self._seq += 1
            uid = f"upload-{self._seq}"
            self.uploads[uid] = _MemUpload(key, opts)
            return uid

    def upload_part(self, key: str, upload_id: str, number: int, body: Any, length: int, md5: bytes,
                    checksum: Optional[PartChecksum] = None) -> str:
        with self._lock:
            self._count("upload_part", key)
            up = self.uploads.get(upload_id)
        if up is None:
            raise memory_error("NoSuchUpload")
        data = self._read(body, length)
        if hashlib.md5(data).digest() != md5 or (checksum and checksum_of(checksum[0], data) != checksum[1]):
            raise memory_error("BadDigest")
        etag = self._etag(hashlib.md5(data).hexdigest())
        with self._lock:
            up.parts[number] = (data, etag)
        return etag

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[Tuple[int, str]],
                           checksums: Optional[Tuple[str, Dict[int, str]]] = None) -> str:
        with self._lock:
            self._count("complete_multipart", key)
            up = self.uploads.get(upload_id)
            if up is None:
                raise memory_error("NoSuchUpload")
            # as AWS: an upload created with a checksum algorithm completes with every part's value
            algorithm = up.opts.attrs.checksum if up.opts.attrs is not None else ""
            if (checksums[0] if checksums else "") != algorithm or (checksums and any(
                    checksum_of(algorithm, up.parts[n][0]) != checksums[1].get(n) for n, _ in parts if n in up.parts)):
                raise memory_error("InvalidPart", "part checksums missing or wrong for the upload's algorithm")
            chosen = []
            for n, e in sorted(parts):
                if n not in up.parts or up.parts[n][1] != e:
                    raise memory_error("InvalidPart", f"part {n}")
                chosen.append(up.parts[n])
            data = b"".join(d for d, _ in chosen)
            etag = multipart_etag([bytes.fromhex(e) for _, e in chosen])
            if self.sse.startswith("aws:kms"):
                etag = self._etag("") + etag[32:]  # opaque, but still "-N"
            self.objects[key] = (data, etag, up.opts)
            self._set_checksum(key, _multipart_checksum(algorithm, data, [d for d, _ in chosen]))
            del self.uploads[upload_id]
            return etag

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with self._lock:
            self._count("abort_multipart")
            self.uploads.pop(upload_id, None)

    def list_parts(self, key: str, upload_id: str) -> Dict[int, Tuple[int, str]]:
        with self._lock:
            self._count("list_parts", key)
            up = self.uploads.get(upload_id)
            if up is None:
                raise memory_error("NoSuchUpload")
            return {n: (len(d), e) for n, (d, e) in up.parts.items()}

    def list_multipart_uploads(self, prefix: str) -> Iterator[MultipartUpload]:
        with self._lock:
            self._count("list_multipart_uploads")
            items = [MultipartUpload(u.key, uid, u.initiated) for uid, u in self.uploads.items()
                     if u.key.startswith(prefix)]
        return iter(items)

    def presign_get(self, key: str, ttl: int) -> str:
        """A well-formed URL naming the object (nothing serves it: the bucket is in memory)."""
        from urllib.parse import quote
        return f"memory://{self.bucket}/{quote(key)}?X-Amz-Expires={min(int(ttl), 7 * 86400)}"


def _multipart_checksum(algorithm: str, data: bytes, parts: Sequence[bytes]) -> str:
    """The checksum S3 stores with a multipart object created with ``algorithm`` (as
    :meth:`PutOptions.create_args` asks): a CRC over the whole object (FULL_OBJECT), SHA-256 of the
    parts' SHA-256s with ``-N`` (COMPOSITE); '' without one."""
    if not algorithm:
        return ""
    if algorithm != "SHA256":
        return f"{algorithm}:FULL_OBJECT:{checksum_of(algorithm, data)}"
    digests = b"".join(hashlib.sha256(p).digest() for p in parts)
    return f"SHA256:COMPOSITE:{base64.b64encode(hashlib.sha256(digests).digest()).decode('ascii')}-{len(parts)}"

"""The one narrow interface to the bucket, and its implementations.

Everything s3-uploader asks of S3 goes through :class:`Remote`: put a small object, the multipart
steps, confirm one object (HEAD), list one folder (ListObjectsV2), delete, check access. Three
implementations share one contract test suite: :class:`BotoRemote` (boto3, the real thing, used
against AWS and any S3-compatible server), :class:`ObstoreRemote` (BotoRemote with single PUTs sent
by the Rust ``object_store`` through obstore, the default where installed: far less CPU per small
file) and :class:`MemoryRemote` (in memory, for unit tests).

Integrity: each PUT and UploadPart carries ``Content-MD5``, which every S3 implementation verifies
before storing; the returned ETag is then compared with the MD5 we computed, so the response itself
proves the object (no second request per file). boto3 >= 1.36 would instead add CRC32 checksums by
default (``when_supported``), which several S3-compatible servers reject or store wrongly, so both
``request_checksum_calculation`` and ``response_checksum_validation`` are set to ``when_required``.
"""
from __future__ import annotations

import abc
import base64
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple


class RemoteError(Exception):
    """A failure reaching the bucket, with a one-line ``reason`` fit for a log line."""

    def __init__(self, reason: str, code: Optional[str] = None):
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # without quotes
    last_modified: Optional[float] = None


@dataclass(frozen=True)
class PutOptions:
    storage_class: str = ""
    sse: str = ""
    sse_kms_key_id: str = ""

    def extra_args(self) -> Dict[str, str]:
        out: Dict[str, str] = {}
        if self.storage_class:
            out["StorageClass"] = self.storage_class
        if self.sse:
            out["ServerSideEncryption"] = self.sse
            if self.sse_kms_key_id and self.sse.startswith("aws:kms"):
                out["SSEKMSKeyId"] = self.sse_kms_key_id
        return out

    @property
    def etag_is_md5(self) -> bool:
        """With SSE-KMS, S3's ETag is not the MD5 of the content."""
        return not self.sse.startswith("aws:kms")


@dataclass(frozen=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: Optional[float] = None


def md5_b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def multipart_etag(part_digests: Sequence[bytes]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the parts' binary MD5s, dash, part count."""
    return f"{hashlib.md5(b''.join(part_digests)).hexdigest()}-{len(part_digests)}"


def clean_etag(etag: Optional[str]) -> str:
    return (etag or "").strip().strip('"').lower()


class Remote(abc.ABC):
    """The operations s3-uploader uses. Implementations raise the SDK's own exceptions for request
    failures (classified by ``retry.classify``) and :class:`RemoteError` from ``check_access``."""

    bucket: str

    @abc.abstractmethod
    def check_access(self) -> None:
        ...

    @abc.abstractmethod
    def put_object(self, key: str, body: Any, length: int, md5: bytes, opts: PutOptions) -> str:
        """Store ``body`` (bytes or a readable of ``length`` bytes) at ``key``; return the ETag."""
        ...

    @abc.abstractmethod
    def head(self, key: str) -> Optional[ObjectInfo]:
        ...

    @abc.abstractmethod
    def list_folder(self, folder: str) -> Iterator[ObjectInfo]:
        """Every object directly in ``folder`` (a key prefix ending in '/', or '' for the root)."""
        ...

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        ...

    @abc.abstractmethod
    def create_multipart(self, key: str, opts: PutOptions) -> str:
        ...

    @abc.abstractmethod
    def upload_part(self, key: str, upload_id: str, number: int, body: Any, length: int, md5: bytes) -> str:
        ...

    @abc.abstractmethod
    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[Tuple[int, str]]) -> str:
        ...

    @abc.abstractmethod
    def abort_multipart(self, key: str, upload_id: str) -> None:
        ...

    @abc.abstractmethod
    def list_parts(self, key: str, upload_id: str) -> Dict[int, Tuple[int, str]]:
        """part number -> (size, etag) of the parts S3 holds for an open multipart upload."""
        ...

    @abc.abstractmethod
    def list_multipart_uploads(self, prefix: str) -> Iterator[MultipartUpload]:
        ...

    def close(self) -> None:  # noqa: B027 - optional
        pass


# ------------------------------------------------------------------------------------------------
# boto3
# ------------------------------------------------------------------------------------------------

class BotoRemote(Remote):
    """The real remote: one shared, thread-safe boto3 client with a connection pool sized for the
    configured concurrency."""

    def __init__(self, bucket: str, *, region: str = "", endpoint_url: str = "", profile: str = "",
                 credentials_file: str = "", addressing_style: str = "auto", ca_bundle: str = "",
                 pool_size: int = 10, connect_timeout: float = 10.0, read_timeout: float = 60.0):
        # botocore's own session and client: boto3's credential chain and client, without the
        # import of boto3's resource layer and s3transfer (~0.1 s of CPU at every start), which
        # nothing here uses
        import botocore.session
        from botocore.config import Config

        from . import __version__

        self.bucket = bucket
        self.endpoint_url = endpoint_url
        session = botocore.session.get_session()
        if credentials_file:
            session.set_config_variable("credentials_file", credentials_file)
        if profile:
            session.set_config_variable("profile", profile)
        self.session = session  # the credential chain, shared with ObstoreRemote
        self.addressing_style = addressing_style
        self.ca_bundle = ca_bundle
        style = addressing_style
        if style == "auto" and endpoint_url:
            style = "path"  # S3-compatible servers rarely have wildcard DNS for virtual hosts
        cfg = Config(
            signature_version="s3v4",
            # Every PUT and part carries Content-MD5 (signed with the headers), which the server checks
            # before it stores anything: a SHA-256 of the body on top (what botocore does by default
            # over http) costs ~4 s of CPU per GiB here and proves nothing more. Over https boto3
            # already leaves it out when Content-MD5 is present.
            s3={"addressing_style": style, "payload_signing_enabled": False},
            # botocore retries one request a few times; the per-file schedule above it lives in SQLite
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=max(10, pool_size),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            tcp_keepalive=True,
            # see the module docstring: we send Content-MD5 ourselves
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra=f"s3-uploader/{__version__}",
        )
        self.client = session.create_client("s3", region_name=region or None, endpoint_url=endpoint_url or None,
                                            config=cfg, verify=ca_bundle or None)

    def check_access(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("404", "NoSuchBucket", "NotFound"):
                reason = "no such bucket"
            elif code in ("403", "AccessDenied", "Forbidden"):
                reason = "access denied: check the credentials and the bucket policy"
            elif code in ("301", "PermanentRedirect"):
                region = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
                reason = f"the bucket is in another region ({region or 'see [s3] region'})"
            else:
                reason = f"{code or status}: {err.get('Message') or exc}"
            raise RemoteError(reason, code) from None
        except BotoCoreError as exc:
            raise RemoteError(" ".join(str(exc).split()), type(exc).__name__) from None

    def put_object(self, key: str, body: Any, length: int, md5: bytes, opts: PutOptions) -> str:
        r = self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=length,
                                   ContentMD5=md5_b64(md5), **opts.extra_args())
        return clean_etag(r.get("ETag"))

    def head(self, key: str) -> Optional[ObjectInfo]:
        from botocore.exceptions import ClientError
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        lm = r.get("LastModified")
        return ObjectInfo(key, int(r["ContentLength"]), clean_etag(r.get("ETag")), lm.timestamp() if lm else None)

    def list_folder(self, folder: str) -> Iterator[ObjectInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder,
                                                                       Delimiter="/")
        for page in pages:
            for o in page.get("Contents", ()):
                lm = o.get("LastModified")
                yield ObjectInfo(o["Key"], int(o["Size"]), clean_etag(o.get("ETag")), lm.timestamp() if lm else None)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def create_multipart(self, key: str, opts: PutOptions) -> str:
        return self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **opts.extra_args())["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, body: Any, length: int, md5: bytes) -> str:
        r = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
                                    ContentLength=length, ContentMD5=md5_b64(md5))
        return clean_etag(r.get("ETag"))

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[Tuple[int, str]]) -> str:
        # botocore turns a 200 response carrying an <Error> body into a ClientError (s3 customisation)
        r = self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{e}"'} for n, e in sorted(parts)]})
        return clean_etag(r.get("ETag"))

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def list_parts(self, key: str, upload_id: str) -> Dict[int, Tuple[int, str]]:
        out: Dict[int, Tuple[int, str]] = {}
        pages = self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key, UploadId=upload_id)
        for page in pages:
            for p in page.get("Parts", ()):
                out[int(p["PartNumber"])] = (int(p["Size"]), clean_etag(p.get("ETag")))
        return out

    def list_multipart_uploads(self, prefix: str) -> Iterator[MultipartUpload]:
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for u in page.get("Uploads", ()):
                ini = u.get("Initiated")
                yield MultipartUpload(u["Key"], u["UploadId"], ini.timestamp() if ini else None)

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------------------------------------
# obstore (Rust object_store) for single PUTs
# ------------------------------------------------------------------------------------------------

class ObstoreError(Exception):
    """An obstore request failure in botocore's shape (``response['Error']['Code']``), so
    ``retry.classify`` treats it like the same failure from boto3."""

    def __init__(self, message: str, code: str, status: Optional[int]):
        super().__init__(message)
        self.response = {"Error": {"Code": code, "Message": message},
                         "ResponseMetadata": {"HTTPStatusCode": status}}


class ObstoreConnectionError(ConnectionError):
    """obstore could not reach the endpoint (no HTTP answer): a network failure."""


def _obstore_key_ok(key: str) -> bool:
    """Whether object_store's path rules keep ``key`` byte for byte. It rejects control characters,
    empty, ``.`` and ``..`` segments, and rewrites a trailing ``/`` and ``\\``; such keys go by boto3."""
    return _OBSTORE_BAD.search(key) is None


# one pass over the key: a control character or backslash, or a segment that is empty, "." or ".."
# (an empty key is one empty segment)
_OBSTORE_BAD = re.compile(r"[\x00-\x1f\x7f\\]|(?:^|/)\.{0,2}(?:/|$)")


class ObstoreRemote(BotoRemote):
    """BotoRemote with single PUTs sent by obstore (Rust ``object_store``): about a fifth of boto3's
    CPU per small object, which on a small box decides throughput.

    Every other operation (multipart with ListParts for resuming, HEAD, list, delete, access
    check) stays on boto3. Credentials come from the same boto3 chain (environment, profile,
    ``credentials_file``, instance role) and are handed to obstore on demand, refreshed when
    botocore refreshes them. Storage class is sent per object; SSE is part of the store's
    configuration (one store per SSE setting). obstore cannot send ``Content-MD5``; instead every
    request is signed over the SHA-256 of its body (``x-amz-content-sha256``, which S3 verifies
    before storing), and an ETag that is an MD5 other than the caller's ``md5`` is refused like a
    wrong Content-MD5: the object is deleted and ``BadDigest`` raised. The uploader then compares
    the ETag with its MD5 as for boto3 (with SSE-KMS, where the ETag is not the MD5, a HEAD confirms
    the size). Keys that object_store would rewrite (see :func:`_obstore_key_ok`) go by boto3.
    """

    def __init__(self, bucket: str, **kw: Any):
        super().__init__(bucket, **kw)
        self._pool_size = max(10, int(kw.get("pool_size", 10)))
        self._connect_timeout = float(kw.get("connect_timeout", 10.0))
        self._read_timeout = float(kw.get("read_timeout", 60.0))
        self._stores: Dict[Tuple[str, str], Any] = {}
        self._stores_lock = threading.Lock()
        self._creds: Any = None

    def _credentials(self) -> Dict[str, Any]:
        """obstore's credential callback, served from botocore's chain."""
        import datetime as dt

        from botocore.credentials import RefreshableCredentials
        from botocore.exceptions import NoCredentialsError
        creds = self._creds or self.session.get_credentials()
        if creds is None:
            raise NoCredentialsError()
        self._creds = creds
        frozen = creds.get_frozen_credentials()
        expires = None
        if isinstance(creds, RefreshableCredentials):
            # ask again soon: botocore refreshes ahead of expiry, obstore just re-reads
            expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
                "token": frozen.token, "expires_at": expires}

    def _store(self, opts: PutOptions) -> Any:
        sse_key = (opts.sse, opts.sse_kms_key_id if opts.sse.startswith("aws:kms") else "")
        with self._stores_lock:
            store = self._stores.get(sse_key)
            if store is not None:
                return store
            import datetime as dt

            from obstore.store import S3Store
            style = self.addressing_style
            if style == "auto":
                style = "path" if self.endpoint_url else "virtual"
            config: Dict[str, Any] = {"region": self.client.meta.region_name or "us-east-1",
                                      "virtual_hosted_style_request": style == "virtual",
                                      "unsigned_payload": False, "skip_signature": False}
            if self.endpoint_url:
                config["endpoint"] = self.endpoint_url
            if sse_key[0]:
                config["server_side_encryption"] = sse_key[0]
                if sse_key[1]:
                    config["sse_kms_key_id"] = sse_key[1]
            client: Dict[str, Any] = {
                "allow_http": self.endpoint_url.startswith("http://"),
                "connect_timeout": dt.timedelta(seconds=self._connect_timeout),
                "read_timeout": dt.timedelta(seconds=self._read_timeout),
                "timeout": dt.timedelta(hours=1),  # a whole request; stalls are caught by read_timeout
                "pool_max_idle_per_host": str(self._pool_size),
                "user_agent": f"s3-uploader/{_version()}",
            }
            if self.ca_bundle:
                with open(self.ca_bundle, "rb") as f:
                    client["root_certificate"] = f.read()
            store = S3Store(self.bucket, config=config, client_options=client,
                            retry_config={"max_retries": 2, "retry_timeout": dt.timedelta(seconds=60)},
                            credential_provider=self._credentials)
            self._stores[sse_key] = store
            return store

    def put_object(self, key: str, body: Any, length: int, md5: bytes, opts: PutOptions) -> str:
        if not _obstore_key_ok(key) or not isinstance(body, (bytes, bytearray, memoryview)):
            # a streamed body goes by boto3: unsigned payload plus Content-MD5 costs less per byte
            # than obstore's SHA-256 signature, and it is never held in memory whole
            return super().put_object(key, body, length, md5, opts)
        import obstore
        store, attrs = self._prepare(opts)
        try:
            r = obstore.put(store, key, body, attributes=attrs, use_multipart=False)
        except Exception as exc:
            raise _obstore_failure(exc) from None
        etag = clean_etag(r.get("e_tag"))
        if _wrong_md5(etag, md5, opts):
            self.delete(key)
            raise _bad_digest(key, etag, md5)
        return etag

    def async_ok(self, key: str) -> bool:
        """Whether :meth:`put_object_soon` can send to ``key``."""
        return _obstore_key_ok(key)

    def put_object_soon(self, key: str, data: bytes, md5: bytes, opts: PutOptions,
                        done: Callable[[Optional[str], Optional[BaseException]], None]) -> Any:
        """:meth:`put_object` for bytes, started on the running asyncio loop: the request runs on
        obstore's own runtime, so one thread keeps many in flight. ``done(etag, None)`` or
        ``done(None, error)`` is called on the loop when it ends, with the same checks and errors
        as :meth:`put_object` (a cancelled request: ``asyncio.CancelledError``). Returns the
        request's future (``cancel()`` abandons it). Only for keys :meth:`async_ok` accepts."""
        import asyncio

        import obstore
        store, attrs = self._prepare(opts)
        fut = obstore.put_async(store, key, data, attributes=attrs, use_multipart=False)

        def settle(f: "asyncio.Future[Any]") -> None:
            if f.cancelled():
                done(None, asyncio.CancelledError())
                return
            exc = f.exception()
            if exc is not None:
                done(None, _obstore_failure(exc))
                return
            etag = clean_etag(f.result().get("e_tag"))
            if not _wrong_md5(etag, md5, opts):
                done(etag, None)
                return
            # not the bytes sent: removed (off the loop, it blocks) before the failure is reported
            removal = asyncio.get_running_loop().run_in_executor(None, self.delete, key)
            removal.add_done_callback(
                lambda r: done(None, (None if r.cancelled() else r.exception()) or _bad_digest(key, etag, md5)))
        fut.add_done_callback(settle)
        return fut

    def _prepare(self, opts: PutOptions) -> Tuple[Any, Optional[Dict[str, str]]]:
        store = self._store(opts)
        if self._creds is None:
            self._credentials()  # no credentials: botocore's own error, classified as auth
        return store, ({"Storage-Class": opts.storage_class} if opts.storage_class else None)


def _wrong_md5(etag: str, md5: bytes, opts: PutOptions) -> bool:
    """An ETag that is an MD5, and not the caller's: what Content-MD5 would have refused. S3 verified
    the body against its signed SHA-256, so the object is the bytes given, and they are not the bytes
    the caller hashed; the caller deletes it."""
    return opts.etag_is_md5 and len(etag) == 32 and etag != md5.hex()


def _bad_digest(key: str, etag: str, md5: bytes) -> "ObstoreError":
    return ObstoreError(f"the object stored for {key} has MD5 {etag}, not {md5.hex()}", "BadDigest", 400)


def _obstore_failure(exc: BaseException) -> BaseException:
    """obstore's exception as the S3 error code it carries, or a network failure when none."""
    import re
    text = str(exc)
    first = text.split("\n\nDebug source:")[0]
    first = " ".join(first.split())[:500]
    code = re.search(r"<Code>([^<]+)</Code>", text)
    status = re.search(r"status code: (\d{3})", text)
    st = int(status.group(1)) if status else None
    name = type(exc).__name__
    if code:
        return ObstoreError(first, code.group(1), st)
    if st is not None:
        return ObstoreError(first, str(st), st)
    if name in ("PermissionDeniedError", "UnauthenticatedError"):
        return ObstoreError(first, "AccessDenied", 403)
    return ObstoreConnectionError(first)


def _version() -> str:
    from . import __version__
    return __version__


def obstore_available() -> bool:
    """Whether the obstore package (Python >= 3.11) can be imported."""
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return True


def remote_from_config(cfg: Any) -> BotoRemote:
    """The remote a Config describes, its pool sized for every request that can be in flight.

    ``[s3] transport``: ``obstore`` sends single PUTs through :class:`ObstoreRemote`; ``boto3``
    sends everything through :class:`BotoRemote`; ``auto`` is obstore when it is installed.
    """
    s3, up = cfg.s3, cfg.upload
    transport = getattr(s3, "transport", "boto3")
    cls = BotoRemote
    if transport in ("obstore", "auto") and obstore_available():
        cls = ObstoreRemote
    elif transport == "obstore":
        import logging
        logging.getLogger(__name__).warning("[s3] transport = obstore, but obstore is not installed (it needs "
                                            "Python >= 3.11: pip install obstore); using boto3")
    return cls(s3.bucket, region=s3.region, endpoint_url=s3.endpoint_url, profile=s3.profile,
               credentials_file=s3.credentials_file, addressing_style=s3.addressing_style,
               ca_bundle=s3.ca_bundle, pool_size=up.upload_workers * up.max_concurrency + 4,
               connect_timeout=up.connect_timeout, read_timeout=up.read_timeout)


# ------------------------------------------------------------------------------------------------
# in memory (unit tests)
# ------------------------------------------------------------------------------------------------

class MemoryError_(Exception):
    """Raised by MemoryRemote in the shape of botocore's ClientError (``response['Error']['Code']``)."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.response = {"Error": {"Code": code, "Message": message}}


@dataclass
class _MemUpload:
    key: str
    opts: PutOptions
    parts: Dict[int, Tuple[bytes, str]] = field(default_factory=dict)
    initiated: float = field(default_factory=time.time)


class MemoryRemote(Remote):
    """A bucket in a dict, with S3's ETag rules and Content-MD5 checks. Thread-safe.

    ``calls`` counts requests by operation name, so tests can assert how many were made.

    Faults, for tests: :meth:`fail` makes every request that writes an object (PUT, the multipart
    steps) and every listing fail as S3 would (throttled, a 5xx, or a permanent error), for one key
    or for all; ``fail(None)`` clears them. Reads that prove an object (HEAD) and deletes never fail.
    """

    # fault mode -> the S3 error code it raises (classified by retry.classify like the real ones)
    FAULTS = {"throttled": "SlowDown", "server": "InternalError", "permanent": "InvalidArgument"}

    def __init__(self, bucket: str = "memory-bucket", exists: bool = True):
        self.bucket = bucket
        self.exists = exists
        self.objects: Dict[str, Tuple[bytes, str, PutOptions]] = {}
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
            raise MemoryError_("NoSuchBucket", "The specified bucket does not exist")
        if op in ("head", "delete", "check_access", "abort_multipart", "list_multipart_uploads"):
            return
        mode = self._fault_keys.get(key or "") or self._fault_all
        if op == "list_folder" and mode is None:
            mode = next((m for k, m in self._fault_keys.items() if k[:k.rfind("/") + 1] == key), None)
        if mode is not None:
            raise MemoryError_(self.FAULTS[mode], f"injected {mode} fault")

    @staticmethod
    def _read(body: Any, length: int) -> bytes:
        data = bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else body.read(length)
        return data

    def check_access(self) -> None:
        with self._lock:
            self._count("check_access")
            if not self.exists:
                raise RemoteError("no such bucket", "NoSuchBucket")

    def put_object(self, key: str, body: Any, length: int, md5: bytes, opts: PutOptions) -> str:
        with self._lock:
            self._count("put_object", key)
        data = self._read(body, length)
        if hashlib.md5(data).digest() != md5:
            raise MemoryError_("BadDigest", "The Content-MD5 you specified did not match what we received.")
        etag = hashlib.md5(data).hexdigest()
        with self._lock:
            self.objects[key] = (data, etag, opts)
        return etag

    def head(self, key: str) -> Optional[ObjectInfo]:
        with self._lock:
            self._count("head")
            o = self.objects.get(key)
        return ObjectInfo(key, len(o[0]), o[1]) if o else None

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

    def create_multipart(self, key: str, opts: PutOptions) -> str:
        with self._lock:
            self._count("create_multipart", key)
            self._seq += 1
            uid = f"upload-{self._seq}"
            self.uploads[uid] = _MemUpload(key, opts)
            return uid

    def upload_part(self, key: str, upload_id: str, number: int, body: Any, length: int, md5: bytes) -> str:
        with self._lock:
            self._count("upload_part", key)
            up = self.uploads.get(upload_id)
        if up is None:
            raise MemoryError_("NoSuchUpload")
        data = self._read(body, length)
        if hashlib.md5(data).digest() != md5:
            raise MemoryError_("BadDigest")
        etag = hashlib.md5(data).hexdigest()
        with self._lock:
            up.parts[number] = (data, etag)
        return etag

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[Tuple[int, str]]) -> str:
        with self._lock:
            self._count("complete_multipart", key)
            up = self.uploads.get(upload_id)
            if up is None:
                raise MemoryError_("NoSuchUpload")
            chosen = []
            for n, e in sorted(parts):
                if n not in up.parts or up.parts[n][1] != e:
                    raise MemoryError_("InvalidPart", f"part {n}")
                chosen.append(up.parts[n])
            data = b"".join(d for d, _ in chosen)
            etag = multipart_etag([bytes.fromhex(e) for _, e in chosen])
            self.objects[key] = (data, etag, up.opts)
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
                raise MemoryError_("NoSuchUpload")
            return {n: (len(d), e) for n, (d, e) in up.parts.items()}

    def list_multipart_uploads(self, prefix: str) -> Iterator[MultipartUpload]:
        with self._lock:
            self._count("list_multipart_uploads")
            items = [MultipartUpload(u.key, uid, u.initiated) for uid, u in self.uploads.items()
                     if u.key.startswith(prefix)]
        return iter(items)

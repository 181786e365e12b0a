"""Single PUTs by obstore (the Rust ``object_store``), everything else by a :class:`BotoRemote`.

obstore costs about a fifth of boto3's CPU per small object, which on a small box decides
throughput; it cannot do what the rest of the product needs (Content-MD5, ListParts, HEAD's
encryption headers), so :class:`ObstoreRemote` holds a BotoRemote and hands it every other call.
obstore's exceptions never leave this module: :func:`obstore_error` reads them into a
:class:`~.errors.RemoteError`.
"""
from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

from .base import MultipartUpload, ObjectInfo, PartChecksum, PutOptions, Remote, clean_etag
from .boto import ASKING, BotoRemote
from .errors import RemoteError, one_line, s3_error
from .trust import TLSError, Trust, origin, read_bundle, tls_error_from_rustls

if TYPE_CHECKING:  # types only: obstore is absent below Python 3.11; boto3-stubs is a test extra
    from mypy_boto3_s3 import S3Client
    from obstore.store import ClientConfig, S3Config, S3Credential


def _obstore_key_ok(key: str) -> bool:
    """Whether object_store's path rules keep ``key`` byte for byte. It rejects control characters,
    empty, ``.`` and ``..`` segments, and rewrites a trailing ``/`` and ``\\``; such keys go by boto3."""
    return _OBSTORE_BAD.search(key) is None


# one pass over the key: a control character or backslash, or a segment that is empty, "." or ".."
# (an empty key is one empty segment)
_OBSTORE_BAD = re.compile(r"[\x00-\x1f\x7f\\]|(?:^|/)\.{0,2}(?:/|$)")


class ObstoreRemote(Remote):
    """Single PUTs sent by obstore; every other operation (multipart with ListParts for resuming,
    HEAD, list, delete, access check) by the :class:`BotoRemote` it holds (``boto``).

    Credentials come from the same boto3 chain (environment, profile,
    ``credentials_file``, instance role) and are handed to obstore on demand, refreshed when
    botocore refreshes them. Storage class is sent per object; SSE is part of the store's
    configuration (one store per SSE setting). obstore cannot send ``Content-MD5``; instead every
    request is signed over the SHA-256 of its body (``x-amz-content-sha256``, which S3 verifies
    before storing). Its answer carries no headers (only the ETag), so it cannot say whether the
    object is KMS-encrypted: the ETag is returned as it is, and the uploader proves the object as
    for boto3 (the ETag when it is the MD5, else a HEAD, see :mod:`s3_uploader.proof`). Nothing is
    ever deleted here on the ground of an ETag. Keys that object_store would rewrite (see
    :func:`_obstore_key_ok`) go by boto3.
    """

    def __init__(self, bucket: str, **kw: Any):
        self.boto = BotoRemote(bucket, **kw)
        self.bucket = bucket
        self._pool_size = max(10, int(kw.get("pool_size", 10)))
        self._connect_timeout = float(kw.get("connect_timeout", 10.0))
        self._read_timeout = float(kw.get("read_timeout", 60.0))
        self._stores: Dict[Tuple[str, str], Any] = {}
        self._stores_lock = threading.Lock()
        self._creds: Any = None

    # what callers read of the remote they were given (the boto3 client for listings, the trust)
    @property
    def client(self) -> S3Client:
        return self.boto.client

    @property
    def trust(self) -> Trust:
        return self.boto.trust

    # -- by boto3 ---------------------------------------------------------------------------------
    def check_access(self) -> None:
        self.boto.check_access()

    def head(self, key: str) -> Optional[ObjectInfo]:
        return self.boto.head(key)

    def head_checksum(self, key: str) -> Optional[ObjectInfo]:
        return self.boto.head_checksum(key)

    def list_folder(self, folder: str) -> Iterator[ObjectInfo]:
        return self.boto.list_folder(folder)

    def delete(self, key: str) -> None:
        self.boto.delete(key)

    def create_multipart(self, key: str, opts: PutOptions) -> str:
        return self.boto.create_multipart(key, opts)

    def upload_part(self, key: str, upload_id: str, number: int, body: Any, length: int, md5: bytes,
                    checksum: Optional[PartChecksum] = None) -> str:
        return self.boto.upload_part(key, upload_id, number, body, length, md5, checksum)

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[Tuple[int, str]],
                           checksums: Optional[Tuple[str, Dict[int, str]]] = None) -> str:
        return self.boto.complete_multipart(key, upload_id, parts, checksums)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.boto.abort_multipart(key, upload_id)

    def list_parts(self, key: str, upload_id: str) -> Dict[int, Tuple[int, str]]:
        return self.boto.list_parts(key, upload_id)

    def list_multipart_uploads(self, prefix: str) -> Iterator[MultipartUpload]:
        return self.boto.list_multipart_uploads(prefix)

    def presign_get(self, key: str, ttl: int) -> str:
        return self.boto.presign_get(key, ttl)

    def close(self) -> None:
        self.boto.close()

    # -- by obstore -------------------------------------------------------------------------------
    def _credentials(self) -> S3Credential:
        """obstore's credential callback, served from botocore's chain."""
        import datetime as dt

        from botocore.credentials import RefreshableCredentials
        from botocore.exceptions import NoCredentialsError
        creds = self._creds or self.boto.session.get_credentials()
        if creds is None:
            raise NoCredentialsError()
        self._creds = creds
        frozen = creds.get_frozen_credentials()
        if frozen.access_key is None or frozen.secret_key is None:  # a key without its secret: none to send
            raise NoCredentialsError()
        expires: Optional[dt.datetime] = None
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
            style = self.boto.addressing_style
            if style == "auto":
                style = "path" if self.boto.endpoint_url else "virtual"
            config: S3Config = {"region": self.client.meta.region_name or "us-east-1",
                                      "virtual_hosted_style_request": style == "virtual",
                                      "unsigned_payload": False, "skip_signature": False}
            if self.boto.endpoint_url:
                config["endpoint"] = self.boto.endpoint_url
            if sse_key[0]:
                config["server_side_encryption"] = sse_key[0]
                if sse_key[1]:
                    config["sse_kms_key_id"] = sse_key[1]
            client: ClientConfig = {
                "allow_http": self.boto.endpoint_url.startswith("http://"),
                "connect_timeout": dt.timedelta(seconds=self._connect_timeout),
                "read_timeout": dt.timedelta(seconds=self._read_timeout),
                "timeout": dt.timedelta(hours=1),  # a whole request; stalls are caught by read_timeout
                "pool_max_idle_per_host": str(self._pool_size),
                "user_agent": f"s3-uploader/{_version()}",
            }
            if self.boto.ca_bundle:
                # added to the system roots obstore already trusts (object_store cannot replace them)
                try:
                    client["root_certificate"] = read_bundle(self.boto.ca_bundle)
                except OSError as exc:
                    raise TLSError(self._endpoint_origin, f"the CA bundle {self.boto.ca_bundle} ({self.trust.source}) cannot "
                                   f"be read: {exc.strerror or exc}", self.trust, certificate=False) from None
            try:
                store = S3Store(self.bucket, config=config, client_options=client,
                                retry_config={"max_retries": 2, "retry_timeout": dt.timedelta(seconds=60)},
                                credential_provider=self._credentials)
            except ValueError as exc:
                if "root_certificate" not in str(exc):
                    raise
                raise TLSError(self._endpoint_origin, f"the CA bundle {self.boto.ca_bundle} ({self.trust.source}) cannot "
                               f"be read: no PEM certificate in it", certificate=False) from None
            self._stores[sse_key] = store
            return store

    def put_object(self, key: str, body: Any, length: int, md5: bytes, opts: PutOptions) -> str:
        if not _obstore_key_ok(key) or not isinstance(body, (bytes, bytearray, memoryview)) or not opts.obstore_ok:
            # a streamed body goes by boto3: unsigned payload plus Content-MD5 costs less per byte
            # than obstore's SHA-256 signature, and it is never held in memory whole; so does an
            # object obstore cannot send whole (Object Lock, a checksum: headers it has no way to send)
            return self.boto.put_object(key, body, length, md5, opts)
        import obstore
        store, attrs, tags = self._prepare(opts)
        try:
            r = obstore.put(store, key, body, attributes=attrs, tags=tags, use_multipart=False)
        except Exception as exc:
            raise obstore_error(exc, self._endpoint_origin) from None
        return clean_etag(r.get("e_tag"))

    def put_object_answer(self, key: str, body: Any, length: int, md5: bytes, opts: PutOptions) -> Tuple[str, str]:
        if opts.obstore_ok:  # nothing obstore cannot send: no checksum asked for, none to answer
            return self.put_object(key, body, length, md5, opts), ""
        return self.boto.put_object_answer(key, body, length, md5, opts)

    def async_ok(self, key: str) -> bool:
        """Whether :meth:`put_object_soon` can send to ``key``."""
        return _obstore_key_ok(key)

    def put_object_soon(self, key: str, data: bytes, md5: bytes, opts: PutOptions,
                        done: Callable[[Optional[str], Optional[BaseException]], None]) -> Any:
        """:meth:`put_object` for bytes, started on the running asyncio loop: the request runs on
        obstore's own runtime, so one thread keeps many in flight. ``done(etag, None)`` or
        ``done(None, error)`` is called on the loop when it ends, with the same answers and errors
        as :meth:`put_object` (a cancelled request: ``asyncio.CancelledError``). Returns the
        request's future (``cancel()`` abandons it). Only for keys :meth:`async_ok` accepts and
        options obstore can send (``opts.obstore_ok``)."""
        import asyncio

        import obstore
        store, attrs, tags = self._prepare(opts)
        # an asyncio Future already (obstore's stub says coroutine): ensure_future hands it back as it is
        fut = asyncio.ensure_future(obstore.put_async(store, key, data, attributes=attrs, tags=tags,
                                                      use_multipart=False))

        def settle(f: "asyncio.Future[Any]") -> None:
            if f.cancelled():
                done(None, asyncio.CancelledError())
                return
            exc = f.exception()
            if exc is not None:
                done(None, obstore_error(exc, self._endpoint_origin))
                return
            done(clean_etag(f.result().get("e_tag")), None)
        fut.add_done_callback(settle)
        return fut

    @property
    def _endpoint_origin(self) -> str:
        return origin(self.client.meta.endpoint_url)

    def _prepare(self, opts: PutOptions) -> Tuple[Any, Optional[Dict[str, str]], Optional[Dict[str, str]]]:
        """The store, obstore's ``attributes`` (storage class, Content-Type, user metadata) and ``tags``."""
        store = self._store(opts)
        if self._creds is None:
            with ASKING:  # no credentials: botocore's own error, an auth failure
                self._credentials()
        attrs = opts.attrs.obstore_attributes() if opts.attrs is not None else {}
        if opts.storage_class:
            attrs["Storage-Class"] = opts.storage_class
        tags = dict(opts.attrs.tags) if opts.attrs is not None and opts.attrs.tags else None
        return store, attrs or None, tags


def obstore_error(exc: BaseException, endpoint: str = "") -> RemoteError:
    """obstore's exception as a RemoteError: the S3 error code (or HTTP status) it carries, a
    :class:`TLSError` when the TLS handshake failed (obstore's message only says "error sending
    request"; the verdict is in its debug source), or a network failure when none of these."""
    text = str(exc)
    first = " ".join(text.split("\n\nDebug source:")[0].split())[:500]
    code = re.search(r"<Code>([^<]+)</Code>", text)
    status = re.search(r"status code: (\d{3})", text)
    st = int(status.group(1)) if status else None
    if code:
        return s3_error(code.group(1), first, st)
    if st is not None:
        return s3_error(str(st), first, st)
    if type(exc).__name__ in ("PermissionDeniedError", "UnauthenticatedError"):
        return s3_error("AccessDenied", first, 403)
    return tls_error_from_rustls(text, endpoint) or RemoteError(first or one_line(exc), "ConnectionError", "network")


def _version() -> str:
    from .. import __version__
    return __version__

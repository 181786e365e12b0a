"""The one narrow interface to the bucket, and its implementations.

Everything s3-uploader asks of S3 goes through :class:`Remote`: put a small object, the multipart
steps, confirm one object (HEAD), list one folder (ListObjectsV2), delete, check access. Three
implementations share one contract test suite: :class:`BotoRemote` (boto3, the real thing, used
against AWS and any S3-compatible server), :class:`ObstoreRemote` (BotoRemote with single PUTs sent
by the Rust ``object_store`` through obstore, the default where installed: far less CPU per small
file) and :class:`MemoryRemote` (in memory, for unit tests).

Integrity: each PUT and UploadPart carries ``Content-MD5``, which every S3 implementation verifies
before storing; the returned ETag is then compared with the MD5 we computed, so the response itself
proves the object (no second request per file). Where the ETag is not the MD5 (SSE-KMS, SSE-C) a
HEAD proves it instead; the rules are in :mod:`s3_uploader.proof`. boto3 >= 1.36 would instead add CRC32 checksums by
default (``when_supported``), which several S3-compatible servers reject or store wrongly, so both
``request_checksum_calculation`` and ``response_checksum_validation`` are set to ``when_required``.

TLS trust is one setting for both transports (:func:`trust_bundle`): ``[s3] ca_bundle``, else the AWS
chain's (``AWS_CA_BUNDLE``, then ``ca_bundle`` in the profile), else the system store. A certificate
the trusted CAs did not sign is a :class:`TLSError` (kind ``tls``), never a network failure.
"""
from __future__ import annotations

import abc
import base64
import errno
import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Literal, Optional, Sequence, Tuple, cast

if TYPE_CHECKING:  # types only: boto3-stubs' S3 client (a test extra); obstore (absent below Python 3.11)
    from mypy_boto3_s3 import S3Client
    from obstore.store import ClientConfig, S3Config, S3Credential

    from .config import Config


class RemoteError(Exception):
    """A failure reaching the bucket, with a one-line ``reason`` fit for a log line."""

    def __init__(self, reason: str, code: Optional[str] = None):
        super().__init__(reason)
        self.reason = reason
        self.code = code


TLS_CODE = "TLS"  # RemoteError.code of a TLS failure: its reason is the whole line for the user

# The system's CA bundle where one is found (what rustls-native-certs, and so obstore, reads on
# Linux and the BSDs): Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, macOS/BSD/Alpine.
_SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                   "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem")


@dataclass(frozen=True)
class Trust:
    """Which CAs the endpoint's certificate must chain to: a PEM ``bundle`` (a path) and where that
    choice came from (``source``, for messages). ``system`` is True when the bundle is the system
    store's own file, or empty when none was found (each transport then uses its default)."""

    bundle: str
    source: str
    system: bool = False


def trust_bundle(ca_bundle: str, session: Any, environ: Optional[Dict[str, str]] = None) -> Trust:
    """The CAs both transports trust, in order: ``[s3] ca_bundle``; else the AWS chain's
    ``ca_bundle`` (``AWS_CA_BUNDLE``, then the profile's ``ca_bundle`` in the AWS config file, as
    botocore reads them); else the system store: ``SSL_CERT_FILE``, or the first system bundle that
    exists (:data:`_SYSTEM_BUNDLES`, then OpenSSL's default file).

    botocore on its own would trust certifi's bundle, not the system's, while obstore trusts the
    system store: giving boto3 the system file makes a CA installed into the system store (how a
    corporate proxy's CA is usually deployed) trusted by both. With no system file at all, the
    bundle is empty and the caller falls back to botocore's bundle for both (see BotoRemote).
    """
    env = os.environ if environ is None else environ
    if ca_bundle:
        return Trust(ca_bundle, "[s3] ca_bundle")
    chain = session.get_config_variable("ca_bundle") if session is not None else None
    if chain:
        return Trust(str(chain), "AWS_CA_BUNDLE" if env.get("AWS_CA_BUNDLE") else "the AWS profile's ca_bundle")
    if env.get("SSL_CERT_FILE") and os.path.isfile(env["SSL_CERT_FILE"]):
        return Trust(env["SSL_CERT_FILE"], "SSL_CERT_FILE", system=True)
    import ssl
    for path in _SYSTEM_BUNDLES + (ssl.get_default_verify_paths().openssl_cafile,):
        if path and os.path.isfile(path):
            return Trust(path, "the system trust store", system=True)
    return Trust("", "the system trust store", system=True)


def read_bundle(path: str) -> bytes:
    """The PEM certificates in ``path``: a bundle file, or a directory of them (``c_rehash`` style,
    which botocore also accepts). Raises OSError when it cannot be read or holds no certificate."""
    marker = b"-----BEGIN CERTIFICATE-----"
    if os.path.isdir(path):
        data = b""
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                with open(full, "rb") as f:
                    text = f.read()
                if marker in text:
                    data += text.rstrip(b"\n") + b"\n"
    else:
        with open(path, "rb") as f:
            data = f.read()
    if marker not in data:
        raise OSError(errno.EINVAL, "no PEM certificate in it")
    return data


class TLSError(Exception):
    """The endpoint's TLS handshake failed: its certificate is not trusted (``certificate`` True), or
    TLS itself failed (e.g. an https URL on a plain-http port). ``str()`` is one line for the user:
    ``TLS certificate of ENDPOINT not trusted: REASON (trusting SOURCE); HINT``. ``trust`` is named
    where it is known (the start-up check); both transports word the same verdict alike."""

    def __init__(self, endpoint: str, reason: str, trust: Optional[Trust] = None, certificate: bool = True):
        self.endpoint = endpoint
        self.reason = reason
        self.certificate = certificate
        if certificate:
            via = ""
            if trust is not None:
                via = f" (trusting {trust.source}{' ' + trust.bundle if trust.bundle else ''})"
            text = f"TLS certificate of {endpoint} not trusted: {reason}{via}; set [s3] ca_bundle or " \
                   "AWS_CA_BUNDLE to the PEM file of the CA that signed it"
        else:
            text = f"TLS with {endpoint} failed: {reason}"
        super().__init__(text)


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (the endpoint, without the bucket and key)."""
    m = re.match(r"[a-z]+://[^/]+", url or "")
    return m.group(0) if m else url


# one wording for a verdict, whichever TLS library gave it (OpenSSL's words for boto3, rustls's
# names for obstore)
_UNKNOWN_ISSUER = "unknown issuer, no trusted CA signed it"
_OPENSSL_WORDS = (("issuer", _UNKNOWN_ISSUER), ("self-signed", _UNKNOWN_ISSUER), ("self signed", _UNKNOWN_ISSUER),
                  ("expired", "the certificate has expired"), ("not yet valid", "the certificate is not valid yet"),
                  ("mismatch", "the certificate is not valid for this host"))
_RUSTLS_WORDS = {"UnknownIssuer": _UNKNOWN_ISSUER, "Expired": "the certificate has expired",
                 "ExpiredContext": "the certificate has expired", "NotValidYet": "the certificate is not valid yet",
                 "NotValidYetContext": "the certificate is not valid yet",
                 "NotValidForName": "the certificate is not valid for this host",
                 "NotValidForNameContext": "the certificate is not valid for this host",
                 "BadSignature": "bad signature", "Revoked": "the certificate is revoked",
                 "BadEncoding": "badly encoded certificate"}


def _ssl_reason(text: str) -> Tuple[str, bool]:
    """From an ssl/urllib3 error text: the reason in a few words, and whether it is the certificate's."""
    m = re.search(r"certificate verify failed: ([^(]+?)\s*(?:\(_ssl|$)", text)
    if m:
        said = m.group(1).strip()
        return next((words for clue, words in _OPENSSL_WORDS if clue in said.lower()), said), True
    m = re.search(r"\[SSL: ([A-Z_]+)\][^(]*", text)
    if m:
        return " ".join(m.group(0).split()), "CERTIFICATE" in m.group(1)
    return " ".join(text.split())[:300], "certificate" in text.lower()


def tls_error_from_botocore(exc: BaseException, endpoint: str, trust: Optional[Trust]) -> TLSError:
    """botocore's ``SSLError`` as a :class:`TLSError` naming ``endpoint`` (its origin)."""
    url = getattr(exc, "kwargs", {}).get("endpoint_url") or endpoint
    reason, cert = _ssl_reason(str(getattr(exc, "kwargs", {}).get("error") or exc))
    return TLSError(_origin(url), reason, trust, certificate=cert)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # without quotes
    last_modified: Optional[float] = None
    # from a HEAD only (a listing does not say): x-amz-server-side-encryption ("" when absent) and
    # x-amz-server-side-encryption-customer-algorithm (SSE-C); see proof.etag_is_md5
    sse: str = ""
    sse_customer: str = ""


@dataclass(frozen=True)
class PutOptions:
    storage_class: str = ""
    sse: str = ""
    sse_kms_key_id: str = ""

    def extra_args(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}  # keyword arguments to boto3 (Any: its stubs type each one its own way)
        if self.storage_class:
            out["StorageClass"] = self.storage_class
        if self.sse:
            out["ServerSideEncryption"] = self.sse
            if self.sse_kms_key_id and self.sse.startswith("aws:kms"):
                out["SSEKMSKeyId"] = self.sse_kms_key_id
        return out

    @property
    def etag_is_md5(self) -> bool:
        """Whether these options let S3 answer with the MD5 as ETag: not when they ask for SSE-KMS.
        Only a routing hint (the asyncio sender takes files whose answers prove them without a
        HEAD): a bucket's default encryption applies whatever we ask, so proof never rests on this
        but on the response (see :mod:`s3_uploader.proof`)."""
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
        """Store ``body`` (bytes or a readable of ``length`` bytes) at ``key``; return the ETag S3
        answered (the MD5 of the bytes, unless the object is encrypted with SSE-KMS or SSE-C: the
        caller proves the object, see :mod:`s3_uploader.proof`)."""
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

    def presign_get(self, key: str, ttl: int) -> str:
        """A URL that GETs ``key`` without credentials for ``ttl`` seconds (at most 7 days): for hooks."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def async_ok(self, key: str) -> bool:
        """Whether ``put_object_soon`` (the asyncio sender's PUT, which only some remotes have) can
        send to ``key``; False here: a remote with that method says when."""
        return False


# ------------------------------------------------------------------------------------------------
# boto3
# ------------------------------------------------------------------------------------------------

class BotoRemote(Remote):
    """The real remote: one shared, thread-safe boto3 client with a connection pool sized for the
    configured concurrency."""

    def __init__(self, bucket: str, *, region: str = "", endpoint_url: str = "", profile: str = "",
                 credentials_file: str = "", addressing_style: Literal["auto", "path", "virtual"] = "auto",
                 ca_bundle: str = "",
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
        self.trust = trust_bundle(ca_bundle, session)
        if not self.trust.bundle:
            # no system bundle file: botocore's own (certifi's), given to obstore too, so that both
            # trust the same CAs (obstore would otherwise find no roots on such a box)
            from botocore.httpsession import get_cert_path
            self.trust = Trust(get_cert_path(True) or "", "botocore's CA bundle", system=True)
        self.ca_bundle = self.trust.bundle
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
        # botocore's create_client is typed for any service; this one is S3's
        self.client: S3Client = cast("S3Client", session.create_client(
            "s3", region_name=region or None, endpoint_url=endpoint_url or None, config=cfg,
            verify=self.ca_bundle or None))

    def check_access(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError, SSLError
        if self.ca_bundle and not self.trust.system:
            # a missing or broken bundle named by the user: say which, before any request blames the server
            try:
                read_bundle(self.ca_bundle)
            except OSError as exc:
                raise RemoteError(f"the CA bundle {self.ca_bundle} ({self.trust.source}) cannot be read: "
                                  f"{exc.strerror or exc}", TLS_CODE) from None
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except SSLError as exc:
            raise RemoteError(str(self.tls_error(exc)), TLS_CODE) from None
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

    def tls_error(self, exc: BaseException) -> TLSError:
        """botocore's ``SSLError`` from this client as a :class:`TLSError`."""
        return tls_error_from_botocore(exc, self.client.meta.endpoint_url, self.trust)

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
        return ObjectInfo(key, int(r["ContentLength"]), clean_etag(r.get("ETag")), lm.timestamp() if lm else None,
                          r.get("ServerSideEncryption") or "", r.get("SSECustomerAlgorithm") or "")

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

    def presign_get(self, key: str, ttl: int) -> str:
        # signed locally with the client's credentials: no request is made
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                  ExpiresIn=min(int(ttl), 7 * 86400))

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
    before storing). Its answer carries no headers (only the ETag), so it cannot say whether the
    object is KMS-encrypted: the ETag is returned as it is, and the uploader proves the object as
    for boto3 (the ETag when it is the MD5, else a HEAD, see :mod:`s3_uploader.proof`). Nothing is
    ever deleted here on the ground of an ETag. Keys that object_store would rewrite (see
    :func:`_obstore_key_ok`) go by boto3.
    """

    def __init__(self, bucket: str, **kw: Any):
        super().__init__(bucket, **kw)
        self._pool_size = max(10, int(kw.get("pool_size", 10)))
        self._connect_timeout = float(kw.get("connect_timeout", 10.0))
        self._read_timeout = float(kw.get("read_timeout", 60.0))
        self._stores: Dict[Tuple[str, str], Any] = {}
        self._stores_lock = threading.Lock()
        self._creds: Any = None

    def _credentials(self) -> S3Credential:
        """obstore's credential callback, served from botocore's chain."""
        import datetime as dt

        from botocore.credentials import RefreshableCredentials
        from botocore.exceptions import NoCredentialsError
        creds = self._creds or self.session.get_credentials()
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
            style = self.addressing_style
            if style == "auto":
                style = "path" if self.endpoint_url else "virtual"
            config: S3Config = {"region": self.client.meta.region_name or "us-east-1",
                                      "virtual_hosted_style_request": style == "virtual",
                                      "unsigned_payload": False, "skip_signature": False}
            if self.endpoint_url:
                config["endpoint"] = self.endpoint_url
            if sse_key[0]:
                config["server_side_encryption"] = sse_key[0]
                if sse_key[1]:
                    config["sse_kms_key_id"] = sse_key[1]
            client: ClientConfig = {
                "allow_http": self.endpoint_url.startswith("http://"),
                "connect_timeout": dt.timedelta(seconds=self._connect_timeout),
                "read_timeout": dt.timedelta(seconds=self._read_timeout),
                "timeout": dt.timedelta(hours=1),  # a whole request; stalls are caught by read_timeout
                "pool_max_idle_per_host": str(self._pool_size),
                "user_agent": f"s3-uploader/{_version()}",
            }
            if self.ca_bundle:
                # added to the system roots obstore already trusts (object_store cannot replace them)
                try:
                    client["root_certificate"] = read_bundle(self.ca_bundle)
                except OSError as exc:
                    raise TLSError(self._endpoint_origin, f"the CA bundle {self.ca_bundle} ({self.trust.source}) cannot "
                                   f"be read: {exc.strerror or exc}", self.trust, certificate=False) from None
            try:
                store = S3Store(self.bucket, config=config, client_options=client,
                                retry_config={"max_retries": 2, "retry_timeout": dt.timedelta(seconds=60)},
                                credential_provider=self._credentials)
            except ValueError as exc:
                if "root_certificate" not in str(exc):
                    raise
                raise TLSError(self._endpoint_origin, f"the CA bundle {self.ca_bundle} ({self.trust.source}) cannot "
                               f"be read: no PEM certificate in it", certificate=False) from None
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
            raise _obstore_failure(exc, self._endpoint_origin) from None
        return clean_etag(r.get("e_tag"))

    def async_ok(self, key: str) -> bool:
        """Whether :meth:`put_object_soon` can send to ``key``."""
        return _obstore_key_ok(key)

    def put_object_soon(self, key: str, data: bytes, md5: bytes, opts: PutOptions,
                        done: Callable[[Optional[str], Optional[BaseException]], None]) -> Any:
        """:meth:`put_object` for bytes, started on the running asyncio loop: the request runs on
        obstore's own runtime, so one thread keeps many in flight. ``done(etag, None)`` or
        ``done(None, error)`` is called on the loop when it ends, with the same answers and errors
        as :meth:`put_object` (a cancelled request: ``asyncio.CancelledError``). Returns the
        request's future (``cancel()`` abandons it). Only for keys :meth:`async_ok` accepts."""
        import asyncio

        import obstore
        store, attrs = self._prepare(opts)
        # an asyncio Future already (obstore's stub says coroutine): ensure_future hands it back as it is
        fut = asyncio.ensure_future(obstore.put_async(store, key, data, attributes=attrs, use_multipart=False))

        def settle(f: "asyncio.Future[Any]") -> None:
            if f.cancelled():
                done(None, asyncio.CancelledError())
                return
            exc = f.exception()
            if exc is not None:
                done(None, _obstore_failure(exc, self._endpoint_origin))
                return
            done(clean_etag(f.result().get("e_tag")), None)
        fut.add_done_callback(settle)
        return fut

    @property
    def _endpoint_origin(self) -> str:
        return _origin(self.client.meta.endpoint_url)

    def _prepare(self, opts: PutOptions) -> Tuple[Any, Optional[Dict[str, str]]]:
        store = self._store(opts)
        if self._creds is None:
            self._credentials()  # no credentials: botocore's own error, classified as auth
        return store, ({"Storage-Class": opts.storage_class} if opts.storage_class else None)


# rustls's certificate verdicts, as its debug output spells them (``InvalidCertificate(UnknownIssuer)``)
_RUSTLS_CERT = re.compile(r"InvalidCertificate\(\s*([A-Za-z]+)")
# other TLS failures rustls reports (a handshake alert, an https URL on a plain-http port)
_RUSTLS_TLS = re.compile(r"\b(AlertReceived\(\s*[A-Za-z]+|InvalidMessage\(\s*[A-Za-z]+|PeerIncompatible\(\s*[A-Za-z]+|"
                         r"PeerMisbehaved\(\s*[A-Za-z]+|NoCertificatesPresented)")


def _obstore_failure(exc: BaseException, endpoint: str = "") -> BaseException:
    """obstore's exception as the S3 error code it carries, a :class:`TLSError` when the TLS
    handshake failed (obstore's message only says "error sending request"; the verdict is in its
    debug source), or a network failure when none of these."""
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
    cert = _RUSTLS_CERT.search(text)
    if cert:
        return TLSError(endpoint, _RUSTLS_WORDS.get(cert.group(1), cert.group(1)))
    other = _RUSTLS_TLS.search(text)
    if other:
        return TLSError(endpoint, " ".join(other.group(0).replace("(", " ").split()), certificate=False)
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


def remote_from_config(cfg: Config) -> BotoRemote:
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

    ``calls`` counts requests by operation name, so tests can assert how many were made. ``sse``
    is the bucket's default encryption: with ``aws:kms`` every object is stored as AWS stores a
    KMS-encrypted one, its ETags (object and parts) random rather than MD5s, and HEAD says so.

    Faults, for tests: :meth:`fail` makes every request that writes an object (PUT, the multipart
    steps) and every listing fail as S3 would (throttled, a 5xx, or a permanent error), for one key
    or for all; ``fail(None)`` clears them. Reads that prove an object (HEAD) and deletes never fail.
    """

    # fault mode -> the S3 error code it raises (classified by retry.classify like the real ones)
    FAULTS = {"throttled": "SlowDown", "server": "InternalError", "permanent": "InvalidArgument"}

    def __init__(self, bucket: str = "memory-bucket", exists: bool = True, sse: str = ""):
        self.bucket = bucket
        self.exists = exists
        self.sse = sse
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
        etag = self._etag(hashlib.md5(data).hexdigest())
        with self._lock:
            self.objects[key] = (data, etag, opts)
        return etag

    def _etag(self, md5: str) -> str:
        """The ETag S3 gives bytes with MD5 ``md5``: the MD5, or with KMS an opaque value."""
        return hashlib.md5(os.urandom(16)).hexdigest() if self.sse.startswith("aws:kms") else md5

    def head(self, key: str) -> Optional[ObjectInfo]:
        with self._lock:
            self._count("head")
            o = self.objects.get(key)
        return ObjectInfo(key, len(o[0]), o[1], sse=self.sse) if o else None

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
        etag = self._etag(hashlib.md5(data).hexdigest())
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
            if self.sse.startswith("aws:kms"):
                etag = self._etag("") + etag[32:]  # opaque, but still "-N"
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

    def presign_get(self, key: str, ttl: int) -> str:
        """A well-formed URL naming the object (nothing serves it: the bucket is in memory)."""
        from urllib.parse import quote
        return f"memory://{self.bucket}/{quote(key)}?X-Amz-Expires={min(int(ttl), 7 * 86400)}"

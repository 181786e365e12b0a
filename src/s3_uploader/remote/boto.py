"""The real remote: boto3's client (botocore's, without boto3's resource layer), against AWS and
any S3-compatible server.

boto3 >= 1.36 would add CRC32 checksums by default (``when_supported``), which several
S3-compatible servers reject or store wrongly, so both ``request_checksum_calculation`` and
``response_checksum_validation`` are ``when_required``: every PUT and part carries Content-MD5.

botocore's exceptions never leave this module: every method runs its requests inside
:data:`ASKING`, which turns them into a :class:`~.errors.RemoteError` (:func:`botocore_error`).
"""
from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any, Dict, Iterator, Literal, Optional, Sequence, Tuple, Type, cast

from .base import MultipartUpload, ObjectInfo, PartChecksum, PutOptions, Remote, clean_etag, md5_b64, stored_checksum
from .errors import TLS_CODE, RemoteError, kind_of_code, one_line, s3_error
from .trust import TLSError, Trust, read_bundle, tls_error_from_botocore, trust_bundle

if TYPE_CHECKING:  # types only: boto3-stubs' S3 client (a test extra)
    from mypy_boto3_s3 import S3Client

# botocore's errors by what they mean (their class names: botocore is imported only when used)
_CREDENTIAL_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                                "NoAuthTokenError", "UnauthorizedSSOTokenError", "SSOTokenLoadError",
                                "ProfileNotFound"})
_NETWORK_ERRORS = frozenset({"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
                             "ConnectTimeoutError", "ConnectionError", "ProxyConnectionError", "HTTPClientError",
                             "ResponseStreamingError", "IncompleteReadError", "ChecksumError",
                             "FlexibleChecksumError", "AwsChunkedWrapperError"})


def botocore_error(exc: BaseException, endpoint: str = "", trust: Optional[Trust] = None) -> RemoteError:
    """botocore's exception (a ClientError: S3's answer; a BotoCoreError: none) as a RemoteError.
    Its message is botocore's own line; a TLS failure names ``endpoint`` and, when given, ``trust``."""
    from botocore.exceptions import ClientError, SSLError
    if isinstance(exc, SSLError):
        return tls_error_from_botocore(exc, endpoint, trust)
    if isinstance(exc, ClientError):
        err, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        after = (meta.get("HTTPHeaders") or {}).get("retry-after", "")
        return s3_error(str(err.get("Code") or status or ""), one_line(exc), status,
                        float(after) if after.isdigit() else None)
    name = type(exc).__name__
    kind = "auth" if name in _CREDENTIAL_ERRORS else "network" if name in _NETWORK_ERRORS else "internal"
    return RemoteError(one_line(exc), name, kind)


class _Asking:
    """``with ASKING:`` around requests: botocore's exceptions leave it as RemoteErrors."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, _kind: Optional[Type[BaseException]], exc: Optional[BaseException],
                 _tb: Optional[TracebackType]) -> None:
        if exc is not None and not isinstance(exc, RemoteError):
            from botocore.exceptions import BotoCoreError, ClientError
            if isinstance(exc, (BotoCoreError, ClientError)):
                raise botocore_error(exc) from exc


ASKING = _Asking()


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

        from .. import __version__

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
                                  f"{exc.strerror or exc}", TLS_CODE, "tls") from None
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except SSLError as exc:
            raise self.tls_error(exc) from None
        except ClientError as exc:
            # HeadBucket's answer has no body: the status is the code, worded here for the user
            err, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
            code, status = str(err.get("Code", "")), meta.get("HTTPStatusCode")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise RemoteError("no such bucket", code, "no_bucket", status=status) from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise RemoteError("access denied: check the credentials and the bucket policy", code, "auth",
                                  status=status) from None
            if code in ("301", "PermanentRedirect"):
                region = meta.get("HTTPHeaders", {}).get("x-amz-bucket-region")
                raise RemoteError(f"the bucket is in another region ({region or 'see [s3] region'})", code,
                                  "no_bucket", hint="set [s3] region", status=status) from None
            raise RemoteError(f"{code or status}: {err.get('Message') or exc}", code, kind_of_code(code),
                              status=status) from None
        except BotoCoreError as exc:
            raise botocore_error(exc) from None

    def presign_get(self, key: str, ttl: int) -> str:
        # signed locally with the client's credentials: no request is made
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                  ExpiresIn=min(int(ttl), 7 * 86400))

    def close(self) -> None:
        self.client.close()

    def tls_error(self, exc: BaseException) -> TLSError:
        """botocore's ``SSLError`` from this client as a :class:`TLSError` naming the trust (start-up)."""
        return tls_error_from_botocore(exc, self.client.meta.endpoint_url, self.trust)

    def put_object(self, key: str, body: Any, length: int, md5: bytes, opts: PutOptions) -> str:
        return self.put_object_answer(key, body, length, md5, opts)[0]

    def put_object_answer(self, key: str, body: Any, length: int, md5: bytes, opts: PutOptions) -> Tuple[str, str]:
        with ASKING:
            r = self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=length,
                                       ContentMD5=md5_b64(md5), **opts.extra_args())
        return clean_etag(r.get("ETag")), stored_checksum(r, "FULL_OBJECT")

    def head(self, key: str) -> Optional[ObjectInfo]:
        return self._head(key, False)

    def head_checksum(self, key: str) -> Optional[ObjectInfo]:
        return self._head(key, True)

    def _head(self, key: str, checksum: bool) -> Optional[ObjectInfo]:
        from botocore.exceptions import ClientError
        extra: Dict[str, Any] = {"ChecksumMode": "ENABLED"} if checksum else {}
        with ASKING:
            try:
                r = self.client.head_object(Bucket=self.bucket, Key=key, **extra)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        lm = r.get("LastModified")
        return ObjectInfo(key, int(r["ContentLength"]), clean_etag(r.get("ETag")), lm.timestamp() if lm else None,
                          r.get("ServerSideEncryption") or "", r.get("SSECustomerAlgorithm") or "",
                          stored_checksum(r) if checksum else "")

    def list_folder(self, folder: str) -> Iterator[ObjectInfo]:
        with ASKING:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder,
                                                                           Delimiter="/")
            for page in pages:
                for o in page.get("Contents", ()):
                    lm = o.get("LastModified")
                    yield ObjectInfo(o["Key"], int(o["Size"]), clean_etag(o.get("ETag")),
                                     lm.timestamp() if lm else None)

    def delete(self, key: str) -> None:
        with ASKING:
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def create_multipart(self, key: str, opts: PutOptions) -> str:
        with ASKING:
            return self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **opts.create_args())["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, body: Any, length: int, md5: bytes,
                    checksum: Optional[PartChecksum] = None) -> str:
        extra: Dict[str, Any] = {"Checksum" + checksum[0]: checksum[1]} if checksum else {}
        with ASKING:
            r = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                        Body=body, ContentLength=length, ContentMD5=md5_b64(md5), **extra)
        return clean_etag(r.get("ETag"))

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[Tuple[int, str]],
                           checksums: Optional[Tuple[str, Dict[int, str]]] = None) -> str:
        listed: Any = [{"PartNumber": n, "ETag": f'"{e}"'} for n, e in sorted(parts)]
        if checksums is not None:
            for p in listed:
                p["Checksum" + checksums[0]] = checksums[1][p["PartNumber"]]
        # botocore turns a 200 response carrying an <Error> body into a ClientError (s3 customisation)
        with ASKING:
            r = self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                      MultipartUpload={"Parts": listed})
        return clean_etag(r.get("ETag"))

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with ASKING:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def list_parts(self, key: str, upload_id: str) -> Dict[int, Tuple[int, str]]:
        out: Dict[int, Tuple[int, str]] = {}
        with ASKING:
            pages = self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key, UploadId=upload_id)
            for page in pages:
                for p in page.get("Parts", ()):
                    out[int(p["PartNumber"])] = (int(p["Size"]), clean_etag(p.get("ETag")))
        return out

    def list_multipart_uploads(self, prefix: str) -> Iterator[MultipartUpload]:
        with ASKING:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for u in page.get("Uploads", ()):
                    ini = u.get("Initiated")
                    yield MultipartUpload(u["Key"], u["UploadId"], ini.timestamp() if ini else None)


"""The contract every remote keeps (:class:`Remote`) and the values it deals in.

Integrity: each PUT and UploadPart carries ``Content-MD5`` (or, by obstore, a signed SHA-256 of the
body), which every S3 implementation verifies before storing; the returned ETag is then compared
with the MD5 we computed, so the response itself proves the object (no second request per file).
Where the ETag is not the MD5 (SSE-KMS, SSE-C) a HEAD proves it instead; the rules are in
:mod:`s3_uploader.proof`.
"""
from __future__ import annotations

import abc
import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from ..objects import ObjectAttributes

# a part's checksum: (algorithm as S3 spells it, e.g. CRC32C; its base64 value)
PartChecksum = Tuple[str, str]


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
    # from a HEAD asking for it only (Remote.head_checksum): the checksum S3 stores with the object,
    # as :func:`stored_checksum` spells it ("" when the server shows none)
    checksum: str = ""


@dataclass(frozen=True)
class PutOptions:
    """How an object is stored: the configuration's storage class and encryption, and per object
    (:meth:`for_object`) what it carries (:class:`~s3_uploader.objects.ObjectAttributes`) and, for a
    single PUT, the value of its checksum (base64, of ``attrs.checksum``'s algorithm) over the body."""

    storage_class: str = ""
    sse: str = ""
    sse_kms_key_id: str = ""
    attrs: Optional[ObjectAttributes] = None
    checksum: str = ""

    def for_object(self, attrs: ObjectAttributes, checksum: str = "") -> "PutOptions":
        return PutOptions(self.storage_class, self.sse, self.sse_kms_key_id, attrs, checksum)

    def extra_args(self) -> Dict[str, Any]:
        """Keyword arguments to boto3's PutObject; CreateMultipartUpload's are :meth:`create_args`."""
        out: Dict[str, Any] = {}  # keyword arguments to boto3 (Any: its stubs type each one its own way)
        if self.storage_class:
            out["StorageClass"] = self.storage_class
        if self.sse:
            out["ServerSideEncryption"] = self.sse
            if self.sse_kms_key_id and self.sse.startswith("aws:kms"):
                out["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.attrs is not None:
            out.update(self.attrs.boto_args())
            if self.checksum:  # a header with our value: never botocore's aws-chunked trailer
                out["Checksum" + self.attrs.checksum] = self.checksum
        return out

    def create_args(self) -> Dict[str, Any]:
        """CreateMultipartUpload's keyword arguments: a CRC is a full-object checksum (S3 combines the
        parts'), SHA-256 can only be composite (a checksum of the parts' checksums)."""
        out = self.extra_args()
        if self.attrs is not None and self.attrs.checksum:
            out["ChecksumAlgorithm"] = self.attrs.checksum
            out["ChecksumType"] = "COMPOSITE" if self.attrs.checksum == "SHA256" else "FULL_OBJECT"
        return out

    @property
    def obstore_ok(self) -> bool:
        """Whether obstore can send all of it (not Object Lock, not a checksum)."""
        return self.attrs is None or self.attrs.obstore_ok

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


# the checksum algorithms S3 may answer with, as its response fields name them (Checksum<ALG>)
_CHECKSUM_FIELDS = ("CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1")


def stored_checksum(response: Mapping[str, Any], kind: str = "") -> str:
    """The checksum an S3 response (PutObject, CompleteMultipartUpload, HeadObject with
    ``ChecksumMode=ENABLED``) shows for the object, as ``ALGORITHM:TYPE:value`` (type FULL_OBJECT or
    COMPOSITE; ``kind`` when the server does not say, as for a single PUT, whose checksum is the whole
    object's by definition; the value base64, ``-N`` for a composite one), or '' when it shows none. This string is what a row records and cleanup compares (:func:`same_checksum`)."""
    for alg in _CHECKSUM_FIELDS:
        value = response.get("Checksum" + alg)
        if value:
            return f"{alg}:{response.get('ChecksumType') or kind}:{value}"
    return ""


def same_checksum(recorded: str, shown: str) -> bool:
    """Whether two :func:`stored_checksum` strings name the same stored checksum: same algorithm and
    value; the type counts only when both say it (a server may leave it out of one answer)."""
    a, b = recorded.split(":", 2), shown.split(":", 2)
    if len(a) != 3 or len(b) != 3:
        return False
    return a[0] == b[0] and a[2] == b[2] and (not a[1] or not b[1] or a[1] == b[1])


def clean_etag(etag: Optional[str]) -> str:
    return (etag or "").strip().strip('"').lower()


class Remote(abc.ABC):
    """The operations s3-uploader uses. Every failure of a request is raised as one
    :class:`~.errors.RemoteError`, classified by the implementation where it reads the answer
    (its ``kind``, ``code``, ``hint``); nothing above a remote sees an SDK's exceptions."""

    bucket: str

    @abc.abstractmethod
    def check_access(self) -> None:
        """Whether the bucket can be reached with these credentials: a RemoteError whose message
        says why not (``no such bucket``, ``access denied: ...``, a TLS verdict, the network's)."""
        ...

    @abc.abstractmethod
    def put_object(self, key: str, body: Any, length: int, md5: bytes, opts: PutOptions) -> str:
        """Store ``body`` (bytes or a readable of ``length`` bytes) at ``key``; return the ETag S3
        answered (the MD5 of the bytes, unless the object is encrypted with SSE-KMS or SSE-C: the
        caller proves the object, see :mod:`s3_uploader.proof`)."""
        ...

    def put_object_answer(self, key: str, body: Any, length: int, md5: bytes, opts: PutOptions) -> Tuple[str, str]:
        """:meth:`put_object`, returning (ETag, the checksum S3 answered it stores, as
        :func:`stored_checksum` spells it, '' when none): for a PUT that sends a checksum. Here the
        remote shows none; a remote whose server answers one says so."""
        return self.put_object(key, body, length, md5, opts), ""

    @abc.abstractmethod
    def head(self, key: str) -> Optional[ObjectInfo]:
        ...

    def head_checksum(self, key: str) -> Optional[ObjectInfo]:
        """:meth:`head` asking for the stored checksum too (``ChecksumMode=ENABLED``): its
        ``checksum`` is the one S3 stores with the object ('' when it shows none). Here: none shown."""
        return self.head(key)

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
    def upload_part(self, key: str, upload_id: str, number: int, body: Any, length: int, md5: bytes,
                    checksum: Optional[PartChecksum] = None) -> str:
        """Send one part; with ``checksum``, S3 verifies the part's checksum too (an upload created
        with that algorithm needs it)."""
        ...

    @abc.abstractmethod
    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[Tuple[int, str]],
                           checksums: Optional[Tuple[str, Dict[int, str]]] = None) -> str:
        """Complete with ``parts`` (number, ETag); ``checksums`` (algorithm, number -> value) for an
        upload created with a checksum algorithm."""
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

    @abc.abstractmethod
    def presign_get(self, key: str, ttl: int) -> str:
        """A URL that GETs ``key`` without credentials for ``ttl`` seconds (at most 7 days): for hooks."""
        ...

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def async_ok(self, key: str) -> bool:
        """Whether ``put_object_soon`` (the asyncio sender's PUT, which only some remotes have) can
        send to ``key``; False here: a remote with that method says when."""
        return False


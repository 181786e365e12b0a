"""What proves that S3 holds the bytes of an upload: pure rules, no I/O.

The bytes themselves are proven on the way in. Every boto3 PUT and UploadPart carries
``Content-MD5``, which S3 checks against the body before it stores anything (a mismatch is refused
with ``BadDigest`` and nothing is stored), and every obstore PUT is signed over the SHA-256 of its
body (``x-amz-content-sha256``), which S3 checks the same way. So a PUT that S3 answered with 200
stored exactly the bytes we hashed, whatever its ETag says. What the ETag adds is a proof that can
be checked later from the outside: for an object S3 stores unencrypted or with SSE-S3 (``AES256``)
a single PUT's ETag is the MD5 of its bytes and a multipart one's the MD5 of the parts' MD5s
followed by ``-N``.

With SSE-KMS or DSSE-KMS (``x-amz-server-side-encryption: aws:kms`` or ``aws:kms:dsse``, as every
object in a bucket with default KMS encryption has, whatever the request asked for) and with SSE-C,
the ETag is *not* the MD5. Then an ETag other than the MD5 says nothing about the bytes, and the
object is proven by a HEAD instead: it is there, with the size sent, and with the ETag the PUT
answered (so it is the object that PUT stored, not a later one). Which case applies is read from
the HEAD response (obstore's PUT answer carries no headers, and the config's ``sse`` does not say
what the bucket does by default), never from our config.

No checksum is asked of the HEAD (``ChecksumMode``): we send none, so AWS would show only the
CRC64NVME it computes by default, which the standard library cannot compute at a useful speed, and
which would prove nothing beyond the Content-MD5 or SHA-256 that S3 checked on the way in.

An ETag is evidence of *wrong* bytes only when the HEAD shows an object that is neither KMS- nor
SSE-C-encrypted, whose ETag has the form of an MD5 (32 hex digits) and is not ours: then S3 says
it stores other bytes than we hashed, and the upload is not recorded (it is retried). An object is
never deleted on the ground of its ETag: every case where a correct object's ETag is not its MD5
(KMS, SSE-C, a server with its own ETags) would otherwise lose a correct object, and a wrong one
is overwritten by the retry anyway.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from .remote import ObjectInfo, RemoteError

# x-amz-server-side-encryption values whose objects' ETags are not the MD5 of their bytes
ETAG_NOT_MD5 = ("aws:kms", "aws:kms:dsse")


class Unconfirmed(RemoteError):
    """S3 does not show what was sent (one of the problems below): a server failure, retried."""

    def __init__(self, problem: str):
        super().__init__(problem, "Unconfirmed", "server")

_MD5 = re.compile(r"[0-9a-f]{32}")


def is_md5_form(etag: str) -> bool:
    """Whether ``etag`` (cleaned: no quotes, lower case) has the form of an MD5: 32 hex digits."""
    return _MD5.fullmatch(etag) is not None


def etag_is_md5(info: ObjectInfo) -> bool:
    """Whether S3 says (in the HEAD response ``info`` came from) that a single-part ETag of this
    object is the MD5 of its bytes: not when it is encrypted with SSE-KMS, DSSE-KMS or SSE-C."""
    return info.sse.lower() not in ETAG_NOT_MD5 and not info.sse_customer


def single_put_problem(info: Optional[ObjectInfo], key: str, size: int, md5: str, etag: str) -> Optional[str]:
    """Why the HEAD ``info`` does not prove a single PUT of ``size`` bytes with MD5 ``md5`` that S3
    answered with ``etag``; None when it does. Called only when ``etag`` is not ``md5`` (when it is,
    the PUT's answer is the proof and no HEAD is made)."""
    if info is None:
        return f"S3 does not show {key} after the upload"
    if info.size != size:
        return f"S3 shows {info.size} bytes for {key}, {size} were sent"
    if info.etag == md5:
        return None  # the PUT's answer was garbled or empty; the object's own ETag proves it
    if etag_is_md5(info) and is_md5_form(info.etag):
        return (f"S3's ETag for {key} ({info.etag}) is not the MD5 sent ({md5}) and the object is not "
                f"encrypted with SSE-KMS or SSE-C")
    if etag and info.etag and info.etag != etag:
        return f"S3 shows another object at {key} (ETag {info.etag}) than the one stored (ETag {etag})"
    return None


def multipart_problem(info: Optional[ObjectInfo], key: str, size: int, expected: str, etag: str,
                      parts_not_md5: Sequence[int] = ()) -> Optional[str]:
    """Why the HEAD ``info`` after CompleteMultipartUpload does not prove the object; None when it does.

    ``expected`` is the multipart ETag computed from the MD5s of the parts sent (each part was
    checked by S3 against its Content-MD5), ``etag`` the one Complete answered, ``parts_not_md5``
    the parts whose UploadPart answer was an MD5-form ETag other than the part's MD5. The HEAD must
    show the object with the size sent. Complete answering ``expected`` proves the parts; then a
    multipart-form ETag in the HEAD must be that one (a plain one cannot be compared: some servers,
    rclone among them, show the whole object's MD5 instead). Otherwise, on an object that is not
    KMS- or SSE-C-encrypted, a part answered with another MD5 than ours is proof of wrong bytes; a
    composite ETag computed another way is not (servers differ), and a multipart-form ETag in the
    HEAD must be Complete's.
    """
    if info is None:
        return f"S3 does not show {key} after the upload"
    if info.size != size:
        return f"S3 shows {info.size} bytes for {key}, {size} were sent"
    if etag == expected or info.etag == expected:
        if "-" in info.etag and info.etag != expected:
            return f"S3 shows another object at {key} (ETag {info.etag}) than the one completed (ETag {expected})"
        return None
    if etag_is_md5(info) and parts_not_md5:
        return (f"S3 answered parts {', '.join(map(str, sorted(parts_not_md5)))} of {key} with ETags that are "
                f"not the MD5s sent, and the object is not encrypted with SSE-KMS or SSE-C")
    if etag and "-" in info.etag and info.etag != etag:
        return f"S3 shows another object at {key} (ETag {info.etag}) than the one completed (ETag {etag})"
    return None

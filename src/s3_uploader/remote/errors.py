"""The one error every remote raises: :class:`RemoteError`, classified where the answer is read.

Each remote turns its SDK's failure into a RemoteError inside its own methods (botocore's in
:mod:`.boto`, obstore's in :mod:`.obstore`; :mod:`.memory` raises it directly), so nothing above
the remote parses an SDK's exception: retry, the uploader, start-up and logs read ``kind``,
``code`` and the properties here. The kinds are the words logs, ``status`` and metrics already use:

- ``network``: no HTTP answer (refused, reset, timed out);
- ``throttled``: the endpoint asks us to slow down (503 SlowDown, 429...);
- ``server``: a 5xx or an S3 error code we do not know: the service may recover;
- ``tls``: the TLS handshake failed (see :class:`TLSError`);
- ``auth``: credentials, signature or permissions; ``no_bucket``: the bucket does not exist;
- ``invalid``: the request itself is refused (key too long, object too large...): trying the same
  file again cannot help;
- ``internal``: the SDK refused the request before sending it (a bug or a bad setting).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .trust import Trust

TLS_CODE = "TLS"  # RemoteError.code of a TLS failure: its message is the whole line for the user

THROTTLED_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
                             "RequestLimitExceeded", "429", "503"})
AUTH_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                        "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "403",
                        "KMS.AccessDeniedException", "KMS.DisabledException", "KMS.NotFoundException"})
INVALID_CODES = frozenset({"KeyTooLongError", "InvalidKey", "EntityTooLarge", "InvalidStorageClass",
                           "InvalidArgument", "InvalidRequest", "MethodNotAllowed", "InvalidObjectName"})
GONE_CODES = frozenset({"NoSuchUpload", "404"})  # a multipart upload no longer there (aborted, or completed)
_DOWN_STATUS = frozenset({500, 502, 503, 504})

_HINTS = {
    "auth": "check the credentials, the clock and the bucket policy",
    "no_bucket": "check [s3] bucket and [s3] region",
    "tls": "set [s3] ca_bundle or AWS_CA_BUNDLE to the PEM file of the CA that signed the endpoint's certificate",
    "network": "check the endpoint URL and the network",
    "throttled": "the endpoint asks for fewer requests; they go on more slowly",
    "server": "the endpoint failed to answer this request; it is tried again",
    "invalid": "the request is refused whatever we retry: see the message",
}


def kind_of_code(code: str) -> str:
    """The kind of an S3 error code (or of an HTTP status written as a code, for a body-less answer)."""
    if code in THROTTLED_CODES:
        return "throttled"
    if code == "NoSuchBucket":
        return "no_bucket"
    if code in AUTH_CODES:
        return "auth"
    if code in INVALID_CODES:
        return "invalid"
    return "server"  # unknown codes and 5xx (and NoSuchUpload: start over): the service may recover


class RemoteError(Exception):
    """A request to the bucket failed. ``str()`` (and ``message``, alias ``reason``) is one line fit
    for a log; ``code`` the S3 error code (or the HTTP status, or the SDK's exception name, or
    :data:`TLS_CODE`); ``kind`` one of the kinds in the module docstring; ``hint`` what the user
    can do (may be empty); ``status`` the HTTP status when there was an answer; ``retry_after``
    the seconds a ``Retry-After`` header asked for, when it did."""

    def __init__(self, message: str, code: str, kind: str, hint: Optional[str] = None,
                 status: Optional[int] = None, retry_after: Optional[float] = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.kind = kind
        self.hint = _HINTS.get(kind, "") if hint is None else hint
        self.status = status
        self.retry_after = retry_after

    @property
    def reason(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        """Whether trying the same request again can help (False: only a change of the file, the
        config or a ``retry`` command can)."""
        return self.kind != "invalid"

    @property
    def endpoint_down(self) -> bool:
        """Whether the endpoint is unreachable or overloaded (network, throttled, a 5xx), rather
        than the bucket, the credentials or the request being wrong."""
        return self.kind in ("network", "throttled") or (
            self.kind == "server" and (self.status in _DOWN_STATUS or self.code in ("InternalError", "ServiceUnavailable")))

    @property
    def gone(self) -> bool:
        """Whether the multipart upload asked about no longer exists (aborted, or completed)."""
        return self.code in GONE_CODES


def one_line(exc: BaseException) -> str:
    """``exc`` as one line of at most 500 characters (its class name when it says nothing)."""
    return (" ".join(str(exc).split()) or type(exc).__name__)[:500]


def s3_error(code: str, message: str, status: Optional[int] = None,
             retry_after: Optional[float] = None) -> RemoteError:
    """The RemoteError for an S3 error answer with ``code`` (kind from :func:`kind_of_code`)."""
    return RemoteError(message, code, kind_of_code(code), status=status, retry_after=retry_after)


class TLSError(RemoteError):
    """The endpoint's TLS handshake failed: its certificate is not trusted (``certificate`` True), or
    TLS itself failed (e.g. an https URL on a plain-http port). ``str()`` is one line for the user:
    ``TLS certificate of ENDPOINT not trusted: REASON (trusting SOURCE); HINT``. ``trust`` is named
    where it is known (the start-up check); both transports word the same verdict alike."""

    def __init__(self, endpoint: str, reason: str, trust: Optional[Trust] = None, certificate: bool = True):
        if certificate:
            via = ""
            if trust is not None:
                via = f" (trusting {trust.source}{' ' + trust.bundle if trust.bundle else ''})"
            text = f"TLS certificate of {endpoint} not trusted: {reason}{via}; set [s3] ca_bundle or " \
                   "AWS_CA_BUNDLE to the PEM file of the CA that signed it"
            hint = ""  # the line already says what to set
        else:
            text = f"TLS with {endpoint} failed: {reason}"
            hint = "check the endpoint URL: an https:// URL on a plain-http port fails like this"
        super().__init__(text, TLS_CODE, "tls", hint=hint)

"""What a failure means and when to try again: error classification and backoff, both pure.

Every failure is classified once into a :class:`Failure` with a *kind* (a short word used in logs,
status and metrics), whether trying again can help, and a hint for the user. botocore already
retries single requests; this is the per-file layer above it, whose schedule lives in SQLite.
"""
from __future__ import annotations

import errno
import random
from dataclasses import dataclass
from typing import Callable, Optional

# S3 error codes that clear up by themselves
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
    "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed", "BadDigest",
    "OperationAborted", "IncompleteBody", "XAmzContentSHA256Mismatch", "500", "502", "503", "504", "429",
}
_AUTH_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "403", "KMS.AccessDeniedException",
    "KMS.DisabledException", "KMS.NotFoundException",
}
_PERMANENT_CODES = {"KeyTooLongError", "InvalidKey", "EntityTooLarge", "InvalidStorageClass",
                    "InvalidArgument", "InvalidRequest", "MethodNotAllowed", "InvalidObjectName"}


@dataclass(frozen=True)
class Failure:
    """A classified failure. ``retry`` False means only a change (of the file, the config, or a
    ``retry`` command) can help; the file is parked at once."""

    kind: str  # throttled | server | network | tls | auth | no_bucket | invalid | local | changed | vanished | internal
    message: str
    retry: bool = True

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def classify(exc: BaseException) -> Failure:
    """Map an exception raised while uploading one file to a Failure."""
    msg = _one_line(exc)
    code = _s3_code(exc)
    if code is not None:
        if code in ("SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
                    "RequestLimitExceeded", "429", "503"):
            return Failure("throttled", msg)
        if code == "NoSuchBucket":
            return Failure("no_bucket", msg)
        if code in _AUTH_CODES:
            return Failure("auth", msg)
        if code in _PERMANENT_CODES:
            return Failure("invalid", msg, retry=False)
        if code == "NoSuchUpload":
            return Failure("server", msg)  # the multipart upload was aborted behind us: start over
        return Failure("server", msg)  # unknown codes and 5xx: assume the service may recover
    name = type(exc).__name__
    if name == "TLSError":  # remote.TLSError: the message already names the endpoint and the reason
        return Failure("tls", msg)
    if name in ("SSLError", "SSLCertVerificationError"):  # botocore's (or ssl's): TLS, not the network
        from .remote import tls_error_from_botocore
        return Failure("tls", _one_line(tls_error_from_botocore(exc, "", None)))
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                "NoAuthTokenError", "UnauthorizedSSOTokenError", "SSOTokenLoadError", "ProfileNotFound"):
        return Failure("auth", msg)
    if name in ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                "ConnectionError", "ProxyConnectionError", "HTTPClientError", "ResponseStreamingError",
                "IncompleteReadError", "ChecksumError", "FlexibleChecksumError", "AwsChunkedWrapperError"):
        return Failure("network", msg)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return Failure("network", msg)
    if isinstance(exc, FileNotFoundError):
        return Failure("vanished", msg, retry=False)
    if isinstance(exc, PermissionError):
        return Failure("local", f"permission denied reading the file ({msg})")
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EIO, errno.EROFS):
            return Failure("local", msg)
        return Failure("local", msg)
    return Failure("internal", f"{name}: {msg}")


def _s3_code(exc: BaseException) -> Optional[str]:
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        err = resp.get("Error") or {}
        code = err.get("Code")
        if code:
            return str(code)
        status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after ``attempt`` failures (1-based).

    Exponential with "equal jitter": half the exponential step is fixed, half is random, so
    retries of many files spread out but none comes back immediately.
    """
    if attempt < 1 or base <= 0:
        return 0.0
    step = min(cap, base * (2 ** min(attempt - 1, 30)))
    return step / 2 + rng() * step / 2


ENDPOINT_KINDS = ("network", "throttled")  # failures of the endpoint, not of the file


@dataclass(frozen=True)
class RetryDecision:
    park: bool
    delay: float


def decide_retry(failure: Failure, attempts: int, max_retries: int, base: float, cap: float,
                 parked_interval: float, rng: Callable[[], float] = random.random,
                 patient: bool = True) -> RetryDecision:
    """After ``attempts`` failed attempts of a file, park it or schedule the next one.

    Auth, TLS-trust and missing-bucket failures say nothing about the file; a ``patient`` caller (the
    daemon) retries them at the capped delay without parking, so fixing credentials or the CA bundle
    resumes every file. A TLS failure is not an endpoint outage either (the endpoint answers; we do
    not trust it): it never starts one (outage.ENDPOINT_KINDS), so each file's line says why.
    Network and throttling failures (an outage) are not counted against ``max_retries`` by a patient
    caller either: they keep the exponential backoff, capped. ``once`` is not patient: they count
    against ``max_retries`` like any other failure.
    """
    if not failure.retry:
        return RetryDecision(True, parked_interval)
    if patient and failure.kind in ("auth", "no_bucket", "tls"):
        return RetryDecision(False, max(cap, base))
    if patient and failure.kind in ENDPOINT_KINDS:
        # an unreachable or throttling endpoint says nothing about the file either: keep backing
        # off at the cap, so a long outage parks nothing and every file goes as soon as it is over
        return RetryDecision(False, backoff_delay(attempts, base, cap, rng))
    if attempts > max_retries:
        return RetryDecision(True, parked_interval)
    return RetryDecision(False, backoff_delay(attempts, base, cap, rng))

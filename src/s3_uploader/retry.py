"""What a failure means and when to try again: error classification and backoff, both pure.

Every failure is classified once into a :class:`Failure` with a *kind* (a short word used in logs,
status and metrics) and whether trying again can help. A remote's failure arrives classified (a
:class:`~s3_uploader.remote.RemoteError`, whose ``hint`` says what the user can do); botocore already
retries single requests; this is the per-file layer above it, whose schedule lives in SQLite.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from .remote.errors import RemoteError, one_line


@dataclass(frozen=True)
class Failure:
    """A classified failure. ``retry`` False means only a change (of the file, the config, or a
    ``retry`` command) can help; the file is parked at once."""

    kind: str  # throttled | server | network | tls | auth | no_bucket | invalid | local | changed | vanished | internal
    message: str
    retry: bool = True
    hint: str = ""  # what the user can do (the remote's RemoteError.hint); said with the ERROR lines

    def advice(self) -> str:
        """``"; HINT"`` to end a log line with, or nothing when there is no hint."""
        return f"; {self.hint}" if self.hint else ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def classify(exc: BaseException) -> Failure:
    """Map an exception raised while uploading one file to a Failure: a remote's
    :class:`~s3_uploader.remote.RemoteError` keeps the kind the remote gave it; the rest are
    local problems (the file, the disk) or bugs."""
    msg = one_line(exc)
    if isinstance(exc, RemoteError):
        if exc.kind == "internal":  # the SDK refused the request: name its error, as for any bug
            return Failure("internal", f"{exc.code}: {msg}")
        return Failure(exc.kind, msg, retry=exc.retryable, hint=exc.hint)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return Failure("network", msg)
    if isinstance(exc, FileNotFoundError):
        return Failure("vanished", msg, retry=False)
    if isinstance(exc, PermissionError):
        return Failure("local", f"permission denied reading the file ({msg})")
    if isinstance(exc, OSError):
        return Failure("local", msg)
    return Failure("internal", f"{type(exc).__name__}: {msg}")


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after ``attempt`` failures (1-based).

    Exponential with "equal jitter": half the exponential step is fixed, half is random, so
    retries of many files spread out but none comes back immediately.
    """
    if attempt < 1 or base <= 0:
        return 0.0
    step = min(cap, base * (2 ** min(attempt - 1, 30)))
    return step / 2 + rng() * step / 2


# failures of the endpoint, not of the file, that a patient caller does not count against max_retries
# (a 5xx is counted: it may be this request's; it still starts an outage, see outage.ENDPOINT_KINDS)
UNCOUNTED_KINDS = ("network", "throttled")


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
    if patient and failure.kind in UNCOUNTED_KINDS:
        # an unreachable or throttling endpoint says nothing about the file either: keep backing
        # off at the cap, so a long outage parks nothing and every file goes as soon as it is over
        return RetryDecision(False, backoff_delay(attempts, base, cap, rng))
    if attempts > max_retries:
        return RetryDecision(True, parked_interval)
    return RetryDecision(False, backoff_delay(attempts, base, cap, rng))

"""Error classification and the backoff schedule."""
from __future__ import annotations

import errno

from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from s3_uploader.retry import backoff_delay, classify, decide_retry


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


def test_failures_are_classified_once_by_kind():
    assert classify(client_error("SlowDown", 503)).kind == "throttled"
    assert classify(client_error("InternalError", 500)).kind == "server"
    assert classify(client_error("AccessDenied", 403)).kind == "auth"
    assert classify(client_error("SignatureDoesNotMatch", 403)).kind == "auth"
    assert classify(client_error("NoSuchBucket", 404)).kind == "no_bucket"
    assert classify(NoCredentialsError()).kind == "auth"
    assert classify(EndpointConnectionError(endpoint_url="http://x")).kind == "network"
    assert classify(ReadTimeoutError(endpoint_url="http://x")).kind == "network"
    invalid = classify(client_error("KeyTooLongError"))
    assert invalid.kind == "invalid" and not invalid.retry
    assert classify(PermissionError(errno.EACCES, "Permission denied")).kind == "local"


def test_backoff_doubles_to_the_cap_with_bounded_jitter():
    lo = [backoff_delay(n, base=2, cap=60, rng=lambda: 0.0) for n in range(1, 8)]
    hi = [backoff_delay(n, base=2, cap=60, rng=lambda: 1.0) for n in range(1, 8)]
    assert lo == [1, 2, 4, 8, 16, 30, 30]
    assert hi == [2, 4, 8, 16, 32, 60, 60]


def test_a_file_is_parked_after_max_retries():
    f = classify(client_error("InternalError", 500))
    assert not decide_retry(f, 3, 3, 1, 10, 3600).park
    d = decide_retry(f, 4, 3, 1, 10, 3600)
    assert d.park and d.delay == 3600


def test_auth_errors_wait_at_the_cap_without_parking_in_the_daemon_but_count_in_once():
    f = classify(client_error("AccessDenied", 403))
    d = decide_retry(f, 99, 3, 1, 300, 3600, patient=True)
    assert not d.park and d.delay == 300
    assert decide_retry(f, 4, 3, 1, 300, 3600, patient=False).park


def test_permanent_errors_park_at_once():
    assert decide_retry(classify(client_error("KeyTooLongError")), 1, 10, 1, 10, 3600).park

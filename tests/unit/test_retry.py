"""Error classification and the backoff schedule."""
from __future__ import annotations

import errno

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from s3_uploader.retry import Failure, backoff_delay, classify, decide_retry


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


# the certificate variables this process inherits (a CI box may name the system bundle in them): the
# tests set the ones they mean
_TRUST_ENV = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CONFIG_FILE", "AWS_PROFILE")


@pytest.fixture(autouse=True)
def _no_inherited_trust(monkeypatch):
    """Each test names the CA it means; SSL_CERT_FILE (the system store's file, if set) stays."""
    for name in _TRUST_ENV:
        monkeypatch.delenv(name, raising=False)


def test_a_tls_failure_is_retried_at_the_cap_without_parking_and_is_no_outage():
    from s3_uploader.outage import Outage
    from s3_uploader.retry import Failure, decide_retry
    tls = Failure("tls", "TLS certificate of https://s3.example.test not trusted: unknown issuer")
    d = decide_retry(tls, attempts=50, max_retries=5, base=1, cap=300, parked_interval=3600, patient=True)
    assert (d.park, d.delay) == (False, 300)
    assert decide_retry(tls, attempts=6, max_retries=5, base=1, cap=300, parked_interval=3600, patient=False).park
    outage = Outage("https://s3.example.test", clock=lambda: 0.0, wall=lambda: 0.0, declare_after=1)
    assert not any(outage.failed(tls) for _ in range(5))
    assert not outage.down


def test_an_outage_is_never_a_reason_to_park_in_the_daemon_but_counts_in_once():
    for kind in ("network", "throttled"):
        f = Failure(kind, "endpoint down")
        d = decide_retry(f, 50, 3, 1, 300, 3600, rng=lambda: 1.0, patient=True)
        assert not d.park and d.delay == 300
        assert decide_retry(f, 4, 3, 1, 300, 3600, patient=False).park
    assert decide_retry(Failure("server", "500"), 4, 3, 1, 300, 3600, patient=True).park

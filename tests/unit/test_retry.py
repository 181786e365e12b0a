"""Error classification and the backoff schedule."""
from __future__ import annotations

import errno

import pytest

from s3_uploader.remote import RemoteError, TLSError, s3_error
from s3_uploader.retry import Failure, backoff_delay, classify, decide_retry


def test_a_remote_error_keeps_the_kind_its_remote_gave_it():
    # the rule that turns an S3 error code into a kind (errors.kind_of_code), as every remote applies it
    assert classify(s3_error("SlowDown", "slow down", 503)).kind == "throttled"
    assert classify(s3_error("503", "503", 503)).kind == "throttled"
    assert classify(s3_error("InternalError", "oops", 500)).kind == "server"
    assert classify(s3_error("SomethingNew", "?", 400)).kind == "server"  # unknown: the service may recover
    assert classify(s3_error("NoSuchUpload", "gone", 404)).kind == "server"  # start over
    assert classify(s3_error("AccessDenied", "no", 403)).kind == "auth"
    assert classify(s3_error("SignatureDoesNotMatch", "no", 403)).kind == "auth"
    assert classify(s3_error("NoSuchBucket", "none", 404)).kind == "no_bucket"
    invalid = classify(s3_error("KeyTooLongError", "too long", 400))
    assert invalid.kind == "invalid" and not invalid.retry
    network = classify(RemoteError("Could not connect to the endpoint URL", "EndpointConnectionError", "network"))
    assert (network.kind, network.message) == ("network", "Could not connect to the endpoint URL")
    tls = classify(TLSError("https://s3.example.test", "unknown issuer"))
    assert tls.kind == "tls" and tls.message.startswith("TLS certificate of https://s3.example.test not trusted")
    assert classify(RemoteError("bad parameter", "ParamValidationError", "internal")).message == \
        "ParamValidationError: bad parameter"


def test_local_problems_and_bugs_are_classified_by_their_python_type():
    assert classify(PermissionError(errno.EACCES, "Permission denied")).kind == "local"
    assert classify(OSError(errno.ENOSPC, "No space left on device")).kind == "local"
    gone = classify(FileNotFoundError(errno.ENOENT, "No such file"))
    assert gone.kind == "vanished" and not gone.retry
    assert classify(ValueError("a bug")).message == "ValueError: a bug"


def test_an_error_says_whether_the_endpoint_is_down_and_whether_an_upload_is_gone():
    assert s3_error("SlowDown", "", 503).endpoint_down
    assert s3_error("InternalError", "", 500).endpoint_down and s3_error("502", "", 502).endpoint_down
    assert RemoteError("refused", "EndpointConnectionError", "network").endpoint_down
    assert not s3_error("NotImplemented", "", 501).endpoint_down
    assert not s3_error("AccessDenied", "", 403).endpoint_down
    assert not TLSError("https://x", "unknown issuer").endpoint_down
    assert s3_error("NoSuchUpload", "", 404).gone and not s3_error("NoSuchKey", "", 404).gone
    assert s3_error("AccessDenied", "", 403).hint  # what the user can do


def test_backoff_doubles_to_the_cap_with_bounded_jitter():
    lo = [backoff_delay(n, base=2, cap=60, rng=lambda: 0.0) for n in range(1, 8)]
    hi = [backoff_delay(n, base=2, cap=60, rng=lambda: 1.0) for n in range(1, 8)]
    assert lo == [1, 2, 4, 8, 16, 30, 30]
    assert hi == [2, 4, 8, 16, 32, 60, 60]


def test_a_file_is_parked_after_max_retries():
    f = classify(s3_error("InternalError", "oops", 500))
    assert not decide_retry(f, 3, 3, 1, 10, 3600).park
    d = decide_retry(f, 4, 3, 1, 10, 3600)
    assert d.park and d.delay == 3600


def test_auth_errors_wait_at_the_cap_without_parking_in_the_daemon_but_count_in_once():
    f = classify(s3_error("AccessDenied", "no", 403))
    d = decide_retry(f, 99, 3, 1, 300, 3600, patient=True)
    assert not d.park and d.delay == 300
    assert decide_retry(f, 4, 3, 1, 300, 3600, patient=False).park


def test_permanent_errors_park_at_once():
    assert decide_retry(classify(s3_error("KeyTooLongError", "too long", 400)), 1, 10, 1, 10, 3600).park


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


def test_a_remote_error_brings_its_hint_for_the_user_to_the_failure_and_a_tls_line_says_it_once():
    denied = classify(s3_error("AccessDenied", "no", 403))
    assert denied.hint == "check the credentials, the clock and the bucket policy"
    assert denied.advice() == "; check the credentials, the clock and the bucket policy"
    assert classify(s3_error("NoSuchBucket", "none", 404)).advice() == "; check [s3] bucket and [s3] region"
    # the certificate line already names ca_bundle: no second copy of it
    untrusted = classify(TLSError("https://s3.example.test", "unknown issuer"))
    assert "ca_bundle" in untrusted.message and untrusted.advice() == ""
    plain_port = classify(TLSError("https://127.0.0.1:9000", "wrong version number", certificate=False))
    assert "https:// URL on a plain-http port" in plain_port.advice()
    assert classify(PermissionError("denied")).advice() == ""  # local problems carry none

"""Which certificates the remotes trust: the config, then the AWS chain, then the system store."""

from __future__ import annotations

import pytest

# the certificate variables this process inherits (a CI box may name the system bundle in them): the
# tests set the ones they mean
_TRUST_ENV = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CONFIG_FILE", "AWS_PROFILE")


@pytest.fixture(autouse=True)
def _no_inherited_trust(monkeypatch):
    """Each test names the CA it means; SSL_CERT_FILE (the system store's file, if set) stays."""
    for name in _TRUST_ENV:
        monkeypatch.delenv(name, raising=False)


class _Session:
    """botocore's session as trust_bundle reads it: the AWS chain's ca_bundle (env, then profile)."""

    def __init__(self, chain: str = ""):
        self.chain = chain

    def get_config_variable(self, name: str) -> str:
        assert name == "ca_bundle"
        return self.chain


def test_trust_is_the_config_then_the_aws_chain_then_the_system_store(tmp_path):
    from s3_uploader.remote import trust_bundle
    mine, chain, system = (tmp_path / n for n in ("mine.pem", "chain.pem", "system.pem"))
    system.write_text("x")
    env = {"AWS_CA_BUNDLE": str(chain), "SSL_CERT_FILE": str(system)}
    assert trust_bundle(str(mine), _Session(str(chain)), env).bundle == str(mine)
    t = trust_bundle("", _Session(str(chain)), env)
    assert (t.bundle, t.source, t.system) == (str(chain), "AWS_CA_BUNDLE", False)
    t = trust_bundle("", _Session(str(chain)), {"SSL_CERT_FILE": str(system)})
    assert (t.bundle, t.source) == (str(chain), "the AWS profile's ca_bundle")
    t = trust_bundle("", _Session(), {"SSL_CERT_FILE": str(system)})
    assert (t.bundle, t.system) == (str(system), True)
    # a system store named by SSL_CERT_FILE that is not there: the system's own file, if any
    t = trust_bundle("", _Session(), {"SSL_CERT_FILE": str(tmp_path / "gone.pem")})
    assert t.system and t.bundle != str(tmp_path / "gone.pem")


# -- botocore's errors without an answer, read into the one typed error where boto.py catches them --

def test_botocore_errors_without_an_answer_are_typed_by_what_they_mean():
    from botocore.exceptions import (EndpointConnectionError, NoCredentialsError, ParamValidationError,
                                     ReadTimeoutError, SSLError)

    from s3_uploader.remote.boto import botocore_error
    assert botocore_error(NoCredentialsError()).kind == "auth"
    down = botocore_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    assert (down.kind, down.code, down.endpoint_down) == ("network", "EndpointConnectionError", True)
    assert botocore_error(ReadTimeoutError(endpoint_url="http://127.0.0.1:9")).kind == "network"
    assert botocore_error(ParamValidationError(report="Bucket is missing")).kind == "internal"
    tls = botocore_error(SSLError(endpoint_url="https://s3.example.test/b/k",
                                  error="[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                                        "unable to get local issuer certificate (_ssl.c:1000)"))
    assert tls.kind == "tls" and not tls.endpoint_down
    assert str(tls).startswith("TLS certificate of https://s3.example.test not trusted: unknown issuer")


def test_a_rustls_verdict_in_obstores_error_is_a_tls_failure_worded_as_openssls():
    from s3_uploader.remote.trust import tls_error_from_rustls
    text = ("Generic S3 error: error sending request\n\nDebug source:\nhyper_util::client::legacy::Error(Connect, "
            "Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) })")
    tls = tls_error_from_rustls(text, "https://s3.example.test")
    assert tls is not None and tls.kind == "tls"
    assert str(tls).startswith("TLS certificate of https://s3.example.test not trusted: unknown issuer")
    assert tls_error_from_rustls("Generic S3 error: connection refused", "https://s3.example.test") is None

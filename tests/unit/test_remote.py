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

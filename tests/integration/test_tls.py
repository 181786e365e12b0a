"""One TLS trust setting for every path, over HTTPS to a real server (issue 12, item 7).

The test makes its own CA and a certificate for 127.0.0.1 signed by it, and runs SeaweedFS serving
S3 over TLS with that certificate (a server of this module's own, on free ports of 127.0.0.1). Small
files go by obstore (the asyncio sender), larger ones by boto3: both must trust the same CAs, in the
same order (``[s3] ca_bundle``, ``AWS_CA_BUNDLE``, the AWS profile's ``ca_bundle``, the system store),
and a certificate nobody trusts must be reported as such, never as a missing bucket or the network.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
from helpers import DaemonProcess, cannot_run, cli, list_keys, make_files, write_config

from s3_uploader.embedded import LocalS3, ServerError
from s3_uploader.remote import BotoRemote, ObstoreRemote, PutOptions, obstore_available
from s3_uploader.retry import classify

SMALL = 3000  # by obstore (the asyncio sender takes single PUTs up to 1 MiB)

LARGE = 2 * 1024 * 1024  # by boto3 (a streamed single PUT)

# the certificate variables this process inherits (a CI box may name the system bundle in them): the
# tests set the ones they mean
_TRUST_ENV = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CONFIG_FILE", "AWS_PROFILE")


def _make_ca(name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _make_server_cert(ca_key, ca_cert):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write_pki(folder: Path, name: str) -> Tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 it signed, as PEM files: (cert, key, ca)."""
    from cryptography.hazmat.primitives import serialization
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _make_ca(f"s3-uploader test CA {name}")
    key, cert = _make_server_cert(ca_key, ca_cert)
    paths = (folder / f"{name}-server.pem", folder / f"{name}-server.key", folder / f"{name}-ca.pem")
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(paths[1], 0o600)
    paths[2].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Dict[str, Tuple[Path, Path, Path]]:
    """Two unrelated CAs, each with a server certificate for 127.0.0.1."""
    try:
        import cryptography  # noqa: F401 - installed with the test extra
    except ImportError:
        cannot_run("the cryptography package is needed to make the test CA")
    folder = tmp_path_factory.mktemp("pki")
    return {"ours": _write_pki(folder, "ours"), "other": _write_pki(folder, "other")}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki) -> Iterator[LocalS3]:
    """SeaweedFS serving S3 over TLS only, with the certificate our CA signed."""
    if not obstore_available():
        cannot_run("obstore is not installed (Python >= 3.11): there is no second transport to agree with boto3")
    server = LocalS3(tmp_path_factory.mktemp("tls-s3"), access_key="tlskey" + secrets.token_hex(4),
                     secret_key=secrets.token_urlsafe(20), tls=pki["ours"])
    server.start()
    try:
        yield server
    finally:
        server.stop()
        assert server.proc is None


@pytest.fixture
def tls_bucket(tls_server) -> str:
    name = f"tls-{secrets.token_hex(4)}"
    tls_server.create_bucket(name)
    return name


@pytest.fixture(autouse=True)
def _no_inherited_trust(monkeypatch):
    """Each test names the CA it means; SSL_CERT_FILE (the system store's file, if set) stays."""
    for name in _TRUST_ENV:
        monkeypatch.delenv(name, raising=False)


def _config(tmp: Path, server: LocalS3, bucket: str, **s3: object) -> Path:
    inbox = tmp / "inbox"
    inbox.mkdir(exist_ok=True)
    (tmp / "state").mkdir(exist_ok=True)
    return write_config(tmp / "config.ini", {
        "watch": {"directory_to_watch": inbox, "stable_seconds": 0, "stable_checks": 1, "scan_interval": "1s"},
        "s3": {"bucket": bucket, "endpoint_url": server.endpoint, "transport": "obstore", **s3},
        "upload": {"retry_backoff_base": "0.2s", "retry_backoff_max": "1s", "max_retries": 1},
        "daemon": {"db_path": tmp / "state" / "state.db", "shutdown_timeout": "20s"},
    })


def _files(tmp: Path) -> Dict[str, bytes]:
    return make_files(tmp / "inbox", [("small-1.jpg", os.urandom(SMALL)), ("small-2.jpg", os.urandom(SMALL)),
                                      ("cam/small-3.jpg", os.urandom(SMALL)), ("large.mp4", os.urandom(LARGE))])


def _keys(server: LocalS3, bucket: str) -> Dict[str, int]:
    c = server.client()
    try:
        return list_keys(c, bucket)
    finally:
        c.close()


def _assert_once_sends_everything(tmp: Path, server: LocalS3, bucket: str, env: Dict[str, str], **s3: object):
    cfg = _config(tmp, server, bucket, **s3)
    files = _files(tmp)
    r = cli("once", "-c", str(cfg), env={**server.env(), **env})
    assert r.returncode == 0, r.stdout + r.stderr
    assert _keys(server, bucket) == {k: len(v) for k, v in files.items()}
    status = json.loads(cli("status", "--json", "-c", str(cfg), env=server.env()).stdout)
    assert status["counts"]["uploaded"] == len(files)


def test_with_AWS_CA_BUNDLE_naming_a_private_CA_once_sends_small_files_by_obstore_and_large_ones_by_boto3(
        tmp_path, tls_server, tls_bucket, pki):
    # before: boto3 trusted it, obstore did not: every small file failed with "network: ... error
    # sending request" while the large one went
    _assert_once_sends_everything(tmp_path, tls_server, tls_bucket, {"AWS_CA_BUNDLE": str(pki["ours"][2])})


def test_with_ca_bundle_in_the_config_once_sends_small_and_large_files_over_https(tmp_path, tls_server, tls_bucket,
                                                                                   pki):
    _assert_once_sends_everything(tmp_path, tls_server, tls_bucket, {}, ca_bundle=pki["ours"][2])


def test_ca_bundle_in_the_config_comes_before_AWS_CA_BUNDLE_on_both_paths(tmp_path, tls_server, tls_bucket, pki):
    # AWS_CA_BUNDLE names a CA that did not sign the server's certificate: the config's wins
    _assert_once_sends_everything(tmp_path, tls_server, tls_bucket, {"AWS_CA_BUNDLE": str(pki["other"][2])},
                                  ca_bundle=pki["ours"][2])


def test_the_AWS_profile_ca_bundle_is_trusted_by_both_paths(tmp_path, tls_server, tls_bucket, pki):
    # boto3 honours ca_bundle in the profile of the AWS config file; before, obstore did not
    aws_config = tmp_path / "aws-config"
    aws_config.write_text(f"[default]\nca_bundle = {pki['ours'][2]}\nregion = us-east-1\n")
    _assert_once_sends_everything(tmp_path, tls_server, tls_bucket, {"AWS_CONFIG_FILE": str(aws_config)})


def test_the_system_store_named_by_SSL_CERT_FILE_is_trusted_by_both_paths(tmp_path, tls_server, tls_bucket, pki):
    # the system store as OpenSSL (and obstore) find it; before, boto3 trusted certifi's bundle instead,
    # and the start-up check failed while obstore would have trusted the endpoint
    _assert_once_sends_everything(tmp_path, tls_server, tls_bucket, {"SSL_CERT_FILE": str(pki["ours"][2])})


def test_an_untrusted_certificate_stops_once_check_and_the_daemon_with_one_line_naming_the_endpoint(tmp_path, tls_server,
                                                                                         tls_bucket):
    # before: "S3 bucket ... does not exist or you don't have access (SSL validation failed ...)"
    cfg = _config(tmp_path, tls_server, tls_bucket)
    _files(tmp_path)
    want = f"TLS certificate of {tls_server.endpoint} not trusted: "
    r = cli("once", "-c", str(cfg), env=tls_server.env())
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if want in ln]
    assert len(lines) == 1, r.stderr
    assert "does not exist" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "ca_bundle" in lines[0]  # the hint: what to set
    r = cli("check", "-c", str(cfg), env=tls_server.env())
    assert r.returncode == 1, r.stdout + r.stderr
    assert want in r.stdout and "does not exist" not in r.stdout, r.stdout
    # the daemon too: unlike an endpoint that does not answer, waiting would not help
    daemon = DaemonProcess(cfg, env=tls_server.env())
    try:
        assert daemon.proc.wait(60) == 1, daemon.output()
        out = daemon.output()
        assert out.count(want) == 1 and "does not exist" not in out and "Traceback" not in out, out
    finally:
        daemon.close()
    assert _keys(tls_server, tls_bucket) == {}


def test_an_unreadable_ca_bundle_is_a_start_up_error_naming_it(tmp_path, tls_server, tls_bucket):
    cfg = _config(tmp_path, tls_server, tls_bucket, ca_bundle=tmp_path / "no-such-ca.pem")
    r = cli("once", "-c", str(cfg), env=tls_server.env())
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"the CA bundle {tmp_path / 'no-such-ca.pem'} ([s3] ca_bundle) cannot be read" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_an_upload_to_an_untrusted_endpoint_fails_with_kind_tls_on_both_paths(tls_server, tls_bucket, pki,
                                                                               monkeypatch):
    # the remote as the uploader drives it, past the start-up check: each path's own exception
    for k, v in tls_server.env().items():
        monkeypatch.setenv(k, v)
    data = os.urandom(SMALL)
    md5 = hashlib.md5(data).digest()
    remote = ObstoreRemote(tls_bucket, endpoint_url=tls_server.endpoint, ca_bundle=str(pki["other"][2]))
    try:
        for path, send in (("obstore", lambda: remote.put_object("k", data, len(data), md5, PutOptions())),
                           ("boto3", lambda: BotoRemote.put_object(remote, "k", data, len(data), md5, PutOptions()))):
            with pytest.raises(Exception) as caught:
                send()
            failure = classify(caught.value)
            assert failure.kind == "tls", (path, failure)  # before: network
            assert failure.message.startswith(f"TLS certificate of {tls_server.endpoint} not trusted: "), \
                (path, failure)
            assert failure.retry
    finally:
        remote.close()


def test_a_running_daemon_reports_a_server_certificate_from_an_untrusted_CA_as_tls_not_network(
        tmp_path, tls_server, pki):
    # the server's certificate is replaced mid-run by one another CA signed (a rotation the client was
    # not told about): the daemon's uploads on both paths fail with kind tls, each file says so once,
    # and no outage is declared (the endpoint answers)
    server = LocalS3(tmp_path / "rotating", access_key=tls_server.access_key, secret_key=tls_server.secret_key,
                     tls=pki["ours"])
    server.start()
    daemon = None
    try:
        bucket = f"tls-{secrets.token_hex(4)}"
        server.create_bucket(bucket)
        cfg = _config(tmp_path, server, bucket, ca_bundle=pki["ours"][2])
        daemon = DaemonProcess(cfg, env=server.env())
        daemon.wait_log("Watching")
        make_files(tmp_path / "inbox", [("before.jpg", os.urandom(SMALL))])
        daemon.wait_log(r"Successfully uploaded before\.jpg")
        server.stop()
        try:
            server = LocalS3(tmp_path / "rotating", access_key=server.access_key, secret_key=server.secret_key,
                             port=server.port, tls=pki["other"])
            server.start()
        except ServerError as exc:  # the port was taken meanwhile: say so rather than pass
            pytest.fail(f"could not restart the server on its port: {exc}")
        # three small ones: three endpoint failures in a row would declare an outage
        after = ["after-1.jpg", "after-2.jpg", "after-3.jpg", "after.mp4"]
        make_files(tmp_path / "inbox", [(n, os.urandom(LARGE if n.endswith(".mp4") else SMALL)) for n in after])
        want = f"failed: TLS trust problem (TLS certificate of {server.endpoint} not trusted: "
        for name in after:
            daemon.wait_log(rf"Upload of {re.escape(name)} failed", timeout=60)
        out = daemon.output()
        for name in after:
            assert f"ERROR   Upload of {name} {want}" in out, out[-3000:]
        assert "network:" not in out, out[-3000:]
        assert "is not answering" not in out, out[-3000:]
        status = json.loads(cli("status", "--json", "-c", str(cfg), env=server.env()).stdout)
        kinds = {e["path"]: e["kind"] for e in status["last_errors"]}
        assert all(kinds.get(n) == "tls" for n in after), status["last_errors"]
        assert not status.get("outage"), status
        assert status["parked"] == [], status["parked"]  # a trust problem says nothing about the files
        assert daemon.stop() == 0
    finally:
        if daemon is not None:
            daemon.close()
        server.stop()
        shutil.rmtree(tmp_path / "rotating", ignore_errors=True)


def test_a_folder_of_pem_files_is_read_as_one_bundle_and_a_file_without_a_certificate_is_refused(tmp_path, pki):
    from s3_uploader.remote import read_bundle
    folder = tmp_path / "cas"
    folder.mkdir()
    shutil.copy(pki["ours"][2], folder / "ours.pem")
    shutil.copy(pki["other"][2], folder / "other.crt")
    (folder / "README").write_text("not a certificate")
    data = read_bundle(str(folder))
    assert data.count(b"-----BEGIN CERTIFICATE-----") == 2
    with pytest.raises(OSError, match="no PEM certificate"):
        read_bundle(str(folder / "README"))

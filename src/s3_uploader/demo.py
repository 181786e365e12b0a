"""``s3-uploader demo``: a local S3-compatible server, a bucket, an inbox, and the daemon on them.

Everything lives in one folder (``./demo`` by default): the server's data, a credentials file with a
random key pair for a ``s3-uploader-demo`` profile, ``config.ini``, the state database and
``inbox/``. Nothing touches ``~/.aws``. Ctrl-C stops the daemon, then the server. The daemon is run
by the caller's ``run`` (cli passes its ``run`` command), so this module does not import cli.
"""
from __future__ import annotations

import secrets
import socket
import sys
from pathlib import Path
from typing import Callable

from . import logs
from .config import Config, load_config
from .embedded import LocalS3, ServerError, free_port

BUCKET = "demo-bucket"
PROFILE = "s3-uploader-demo"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def run_demo(run: Callable[[Config], int], workdir: Path, server_kind: str = "seaweedfs", port: int = 8333) -> int:
    """Set up ``workdir``, start the server, then ``run(config)`` until it returns; stop the server.

    Returns what ``run`` returned, or 1 when the server does not start.
    """
    workdir = workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    creds = workdir / "credentials"
    if creds.exists():
        text = creds.read_text()
        key = text.split("aws_access_key_id = ", 1)[1].split()[0]
        secret = text.split("aws_secret_access_key = ", 1)[1].split()[0]
    else:
        key, secret = "demo" + secrets.token_hex(6), secrets.token_urlsafe(24)
        creds.write_text(f"[{PROFILE}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
        creds.chmod(0o600)
    server = LocalS3(workdir / "server", kind=server_kind, access_key=key, secret_key=secret,
                     port=port if _port_free(port) else free_port())
    inbox = workdir / "inbox"
    inbox.mkdir(exist_ok=True)
    cfg_path = workdir / "config.ini"
    cfg_path.write_text(
        "# Written by 's3-uploader demo'. Every key is documented in config.example.ini.\n"
        f"[watch]\ndirectory_to_watch = {inbox}\nstable_seconds = 2\n"
        f"[s3]\nbucket = {BUCKET}\nendpoint_url = {server.endpoint}\nprofile = {PROFILE}\n"
        f"credentials_file = {creds}\n"
        f"[cleanup]\n# delete_after = 1h\n"
        f"[daemon]\ndb_path = {workdir / 'state.db'}\n")
    print(f"Starting {server_kind} on {server.endpoint} ...", flush=True)
    try:
        server.start()
        server.create_bucket(BUCKET)
    except ServerError as exc:
        print(f"s3-uploader demo: {exc}", file=sys.stderr)
        server.stop()
        return 1
    me = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith("s3-uploader") else "s3-uploader"
    exe = str(Path(sys.executable).parent / "s3-uploader") if (Path(sys.executable).parent / "s3-uploader").exists() else me
    print(f"""
s3-uploader demo is running.
  S3 server : {server_kind} at {server.endpoint} (pid {server.pid}, data in {server.workdir})
  bucket    : s3://{BUCKET}
  inbox     : {inbox}
              drop files here, e.g.:  cp some-file {inbox}/
  see them  : {exe} ls -c {cfg_path}
  status    : {exe} status -c {cfg_path}
  config    : {cfg_path}
Press Ctrl-C to stop.
""", flush=True)
    try:
        cfg = load_config(cfg_path)
        logs.setup("INFO")
        return run(cfg)
    finally:
        server.stop()
        print("demo stopped (data kept in %s)" % workdir)

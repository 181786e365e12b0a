"""Test helpers: condition waits with deadlines, config files, and the daemon as a subprocess.

Nothing here sleeps and hopes: every wait polls an observable condition until a deadline and
fails with a message saying what never happened.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, TypeVar

from s3_uploader.config import Config
from s3_uploader.keys import Filters, KeyMaker
from s3_uploader.remote import MemoryRemote, Remote
from s3_uploader.scanner import Scanner
from s3_uploader.store import Store
from s3_uploader.uploader import Settings
from s3_uploader.writers import WriterProbe

T = TypeVar("T")
PY = sys.executable


def wait_for(cond: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``cond`` until it returns something truthy (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def write_config(path: Path, sections: Dict[str, Dict[str, object]]) -> Path:
    lines: List[str] = []
    for sec, values in sections.items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {v}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def cli(*args: str, env: Optional[Dict[str, str]] = None, timeout: float = 120.0,
        cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run ``python -m s3_uploader ARGS`` to completion and return the result (text)."""
    return subprocess.run([PY, "-m", "s3_uploader", *args], env=_env(env), capture_output=True, text=True,
                          timeout=timeout, cwd=str(cwd) if cwd else None, stdin=subprocess.DEVNULL)


def _env(extra: Optional[Dict[str, str]]) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("AWS_PROFILE", None)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def once(ws, *, prefix: Iterable[str] = (), timeout: float = 120.0,
         **sections: Dict[str, object]) -> subprocess.CompletedProcess:
    """Run ``s3-uploader once`` on the workspace ``ws`` (conftest's ``workspace``) to completion.

    Given ``sections`` (``s3={...}``, ``cleanup={...}``, as ``ws.config`` takes them), the config is
    first rewritten with exactly those, every other key at the workspace's default; without, the
    config written last is used (the defaults if none was). ``prefix`` is a command that execs the
    rest (e.g. setpriv).
    """
    if sections or not ws.config_path.exists():
        ws.config(**sections)
    return subprocess.run([*prefix, PY, "-m", "s3_uploader", "once", "-c", str(ws.config_path)],
                          env=_env(ws.server.env()), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def status(ws) -> dict:
    """``s3-uploader status --json`` on the workspace ``ws``, parsed; fails the test if it fails."""
    r = cli("status", "--json", "-c", str(ws.config_path))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class Clock:
    """A fake clock for the ``clock=`` seams: calling it returns ``t``, which moves only when the test
    sets it (``clock.t = ...``, ``clock.t += 60``)."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class DaemonProcess:
    """``s3-uploader run`` in a subprocess, its stderr in a file we can wait on."""

    def __init__(self, config: Path, env: Optional[Dict[str, str]] = None, log_path: Optional[Path] = None,
                 command: str = "run", wrapper: Iterable[str] = ()):
        self.config = config
        self.log_path = log_path or config.with_suffix(".stderr.log")
        self._log = open(self.log_path, "ab")
        self._offset = self._log.tell()  # a restarted daemon appends: read only our own lines
        # ``wrapper``: a command that execs the rest (unshare, setpriv), so the pid is the daemon's
        self.proc = subprocess.Popen([*wrapper, PY, "-m", "s3_uploader", command, "-c", str(config)], env=_env(env),
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    def wait_until(self, cond: Callable[[], T], timeout: float = 30.0, what: str = "condition",
                   context: Optional[Callable[[], str]] = None) -> T:
        """:func:`wait_for` ``cond``; on a timeout the failure shows the daemon's output (and ``context()``)."""
        try:
            return wait_for(cond, timeout, what=what)
        except AssertionError as exc:
            extra = f"\n--- context ---\n{context()}" if context else ""
            raise AssertionError(f"{exc}{extra}\n--- daemon output ---\n{self.output()[-4000:]}") from None

    def wait_log(self, pattern: str, timeout: float = 30.0, count: int = 1) -> str:
        rx = re.compile(pattern)

        def found() -> bool:
            if self.proc.poll() is not None and len(rx.findall(self.output())) < count:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before logging {pattern!r}:\n"
                                     + self.output()[-3000:])
            return len(rx.findall(self.output())) >= count
        try:
            wait_for(found, timeout, what=f"log line {pattern!r} x{count}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon output ---\n{self.output()[-4000:]}") from None
        return self.output()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if not self._log.closed:
            self._log.close()


def list_keys(client, bucket: str, prefix: str = "") -> Dict[str, int]:
    out: Dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", ()):
            out[o["Key"]] = o["Size"]
    return out


def get_bytes(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def make_files(root: Path, spec: Iterable[tuple]) -> Dict[str, bytes]:
    """Create files from (relative path, bytes) pairs; returns them as a dict."""
    out = {}
    for rel, data in spec:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[rel] = data
    return out


def cannot_run(reason: str) -> None:
    """A test whose prerequisite is missing: skipped on a developer's machine, but a failure in CI
    (``CI`` set), where every test must run and a skip must never pass for a proof."""
    import pytest
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run every test: install it in the CI setup)")
    pytest.skip(reason)


def recorded_parts(db: Path) -> int:
    """Parts committed to the state database, read as another process would."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT count(*) FROM parts").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        conn.close()


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's; collects every message received."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: List[str] = []

    def receive(self) -> List[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def lines(self) -> List[str]:
        return [line for m in self.receive() for line in m.split("\n")]

    def close(self) -> None:
        self.sock.close()


class Receiver:
    """A local HTTP receiver on a thread (a webhook's far end): answers each POST with the next code
    of ``codes`` (then 200), ``slow`` seconds late; keeps what it received. A context manager."""

    def __init__(self, codes: Iterable[int] = (), slow: float = 0.0):
        self.codes, self.slow = list(codes), slow
        self.received: List[Dict[str, Any]] = []
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rx.received.append({"type": self.headers["Content-Type"], "body": json.loads(body)})
                time.sleep(rx.slow)  # a slow receiver is what the timeout test is about
                code = rx.codes.pop(0) if rx.codes else 200
                self.send_response(code)
                if code in (301, 302, 307):
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs; a zombie (killed, not yet reaped by its parent) counts
    as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class SimpleLive:
    """A :class:`s3_uploader.views.Live` of given parts, for the stages built without a Daemon (a test
    swaps a part by assigning it, as a reload does). ``probe`` and ``settings`` left None: parts the
    test never reaches."""

    cfg: Config
    store: Store
    scanner: Scanner
    filters: Filters
    keymaker: KeyMaker
    remote: Remote = field(default_factory=MemoryRemote)
    probe: Optional[WriterProbe] = None
    settings: Optional[Settings] = None

    def upload_settings(self) -> Settings:
        assert self.settings is not None
        return self.settings

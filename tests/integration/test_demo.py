"""The quick start's embedded default: `s3-uploader demo` brings up a server, a bucket and an inbox."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from helpers import cli, pid_alive, wait_for

from s3_uploader.embedded import free_port


def test_demo_uploads_a_dropped_file_and_stops_its_server_on_ctrl_c(tmp_path):
    workdir = tmp_path / "demo"
    log_path = tmp_path / "demo.log"
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "s3_uploader", "demo", "--dir", str(workdir), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        out = lambda: log_path.read_text(errors="replace")  # noqa: E731
        wait_for(lambda: "Watching" in out() or proc.poll() is not None, 90, what="demo to start")
        assert proc.poll() is None, out()
        text = out()
        assert f"http://127.0.0.1:{port}" in text and "drop files here" in text
        assert re.search(r"inbox\s+: " + re.escape(str(workdir / "inbox")), text)
        server_pid = int(re.search(r"\(pid (\d+)", text).group(1))
        (workdir / "inbox" / "hello.txt").write_text("hello from the demo")
        wait_for(lambda: "Successfully uploaded hello.txt" in out(), 60, what="the dropped file to upload")
        r = cli("ls", "-c", str(workdir / "config.ini"))
        assert r.returncode == 0 and "hello.txt" in r.stdout, r.stdout + r.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, out()
        wait_for(lambda: not pid_alive(server_pid), 30, what="the demo server to stop")
        assert "demo stopped" in out()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

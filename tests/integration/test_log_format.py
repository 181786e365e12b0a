"""A daemon with ``log_format = json`` writes only JSON lines."""

from __future__ import annotations

import json

from helpers import cli, make_files


def test_a_daemon_with_log_format_json_writes_only_json_lines(workspace):
    make_files(workspace.inbox, [(f"f{i}.txt", b"x" * i) for i in range(5)])
    log_file = workspace.state / "daemon.log"
    workspace.config(daemon={"log_format": "json", "log_file": log_file, "log_max_bytes": "600",
                             "log_backup_count": "3"})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    files = sorted(workspace.state.glob("daemon.log*"))
    assert len(files) >= 2, "600 bytes hold a few lines: the log must have rotated"
    assert len(files) <= 4
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert sum(r["msg"].startswith("Successfully uploaded") for r in records) >= 1
    # warnings and errors also reach stderr, in the same format; here there are none
    assert all(json.loads(line) for line in r.stderr.splitlines())

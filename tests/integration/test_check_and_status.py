"""``check``, ``status`` and start-up problems against the real server: exit codes and one clear line
per problem.
"""

from __future__ import annotations

import json

from helpers import cli, wait_for, write_config


def test_a_missing_watch_directory_is_one_line_and_non_zero(tmp_path, s3_server, bucket):
    cfg = write_config(tmp_path / "config.ini", {
        "watch": {"directory_to_watch": tmp_path / "nope"},
        "s3": {"bucket": bucket, "endpoint_url": s3_server.endpoint},
        "daemon": {"db_path": tmp_path / "s.db"}})
    r = cli("run", "-c", str(cfg), env=s3_server.env())
    assert r.returncode == 1
    assert f"Watch directory does not exist: {tmp_path / 'nope'}" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_missing_bucket_is_one_line_and_non_zero(tmp_path, s3_server):
    (tmp_path / "in").mkdir()
    cfg = write_config(tmp_path / "config.ini", {
        "watch": {"directory_to_watch": tmp_path / "in"},
        "s3": {"bucket": "no-such-bucket-xyz", "endpoint_url": s3_server.endpoint},
        "daemon": {"db_path": tmp_path / "s.db"}})
    r = cli("once", "-c", str(cfg), env=s3_server.env())
    assert r.returncode == 1
    assert "S3 bucket no-such-bucket-xyz does not exist or you don't have access (no such bucket)" in r.stderr
    assert "Traceback" not in r.stderr


def test_wrong_credentials_are_reported_as_access_problems(tmp_path, s3_server, bucket):
    (tmp_path / "in").mkdir()
    cfg = write_config(tmp_path / "config.ini", {
        "watch": {"directory_to_watch": tmp_path / "in"},
        "s3": {"bucket": bucket, "endpoint_url": s3_server.endpoint},
        "daemon": {"db_path": tmp_path / "s.db"}})
    env = dict(s3_server.env(), AWS_SECRET_ACCESS_KEY="wrong-secret")
    r = cli("check", "-c", str(cfg), env=env)
    assert r.returncode == 1
    assert f"S3 bucket {bucket} does not exist or you don't have access" in r.stdout
    assert "wrong-secret" not in r.stdout + r.stderr  # never a secret in output


def test_check_says_ok_one_line_each(workspace):
    workspace.config()
    r = cli("check", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Config OK:")
    assert any(l.startswith("Watch directory OK:") for l in lines)
    assert any(l.startswith(f"S3 bucket OK: s3://{workspace.bucket}/") for l in lines)


def test_status_json_has_counts_for_every_state(workspace):
    (workspace.inbox / "a.txt").write_text("a")
    workspace.config()
    assert cli("once", "-c", str(workspace.config_path), env=workspace.server.env()).returncode == 0
    r = cli("status", "--json", "-c", str(workspace.config_path))
    data = json.loads(r.stdout)
    assert data["counts"] == {"pending": 0, "uploading": 0, "uploaded": 1, "failed": 0, "parked": 0,
                              "deleted": 0, "archived": 0}
    assert data["oldest_waiting"] is None


def test_sigterm_while_the_daemon_is_still_starting_is_a_clean_stop(workspace):
    import signal as sig
    workspace.config()
    d = workspace.start()

    def catches_sigterm() -> bool:  # the kernel's view: SIGTERM has a handler (bit 15 of SigCgt)
        with open(f"/proc/{d.pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        return bool(mask & (1 << (sig.SIGTERM - 1)))

    wait_for(catches_sigterm, timeout=30, what="the command to take over SIGTERM")
    d.signal(sig.SIGTERM)
    assert d.proc.wait(60) == 0, d.output()
    d.close()

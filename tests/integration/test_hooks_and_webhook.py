"""Hooks and the webhook against the real server (the daemon as a subprocess): each event's hook sees
its environment, the webhook is retried until its receiver answers 2xx and its presigned URL GETs the
object, a hanging hook delays no upload and no shutdown, a kill -9 between the upload and the
delivery is made up for at the next start, and a reload changes the command for the next event."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List

import pytest
from helpers import Receiver, get_bytes, make_files, status, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the hooks here are POSIX commands")

# A hook: appends its S3U_* environment as one JSON line to argv[1]; with argv[2], then waits (up to
# two minutes) until that file exists, so a test can kill the daemon while the hook runs.
HOOK = """import json, os, sys, time
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith("S3U_")}) + "\\n")
deadline = time.monotonic() + 120
while len(sys.argv) > 2 and not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def hook(ws, *args: Path) -> str:
    """The command line of :data:`HOOK` with ``args``."""
    script = ws.tmp / "hook.py"
    script.write_text(HOOK)
    return " ".join([sys.executable, str(script), *(str(a) for a in args)])


def configure(ws, hooks: Dict[str, object], **sections: Dict[str, object]) -> None:
    """The workspace's config with a [hooks] section."""
    path = ws.config(**sections)
    with open(path, "a") as f:
        f.write("[hooks]\n" + "".join(f"{k} = {v}\n" for k, v in hooks.items()))


def seen(path: Path) -> List[Dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def by_event(path: Path, event: str) -> List[Dict[str, str]]:
    return [e for e in seen(path) if e["S3U_EVENT"] == event]


def test_each_event_runs_its_hook_with_its_details_in_the_environment(workspace, s3_client):
    out = workspace.tmp / "events.jsonl"
    archive = workspace.tmp / "archive"
    cmd = hook(workspace, out)
    configure(workspace, {"on_uploaded": cmd, "on_parked": cmd, "on_deleted": cmd},
              cleanup={"delete_after": "1s", "cleanup_interval": "1s"})
    d = workspace.start()
    d.wait_log("Watching")
    data = b"clip bytes"
    long_rel = "/".join(["x" * 250] * 5) + "/too-long.mp4"  # a key over S3's 1024 bytes: parked
    make_files(workspace.inbox, [("cam/a.mp4", data), (long_rel, b"never sent")])
    d.wait_until(lambda: by_event(out, "uploaded") and by_event(out, "parked") and by_event(out, "deleted"),
                 what="uploaded, parked and deleted hooks")
    (up,) = by_event(out, "uploaded")
    path = str(workspace.inbox / "cam" / "a.mp4")
    assert up == {"S3U_EVENT": "uploaded", "S3U_PATH": path, "S3U_REL": "cam/a.mp4", "S3U_BUCKET": workspace.bucket,
                  "S3U_KEY": "cam/a.mp4", "S3U_SIZE": str(len(data)), "S3U_ETAG": hashlib.md5(data).hexdigest(),
                  "S3U_ERROR": "", "S3U_URL": "", "S3U_TIME": up["S3U_TIME"]}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", up["S3U_TIME"])
    (gone,) = by_event(out, "deleted")
    assert {k: v for k, v in gone.items() if k not in ("S3U_EVENT", "S3U_TIME")} == \
        {k: v for k, v in up.items() if k not in ("S3U_EVENT", "S3U_TIME")}
    assert not os.path.exists(path)
    (parked,) = by_event(out, "parked")
    assert parked["S3U_REL"] == long_rel and parked["S3U_KEY"] == long_rel and parked["S3U_SIZE"] == "10"
    assert "1024" in parked["S3U_ERROR"] and parked["S3U_ETAG"] == ""

    # archived: a reload switches cleanup to archiving; the hook says where the copy is now
    text = workspace.config_path.read_text()
    workspace.config_path.write_text(text.replace("[cleanup]\n", f"[cleanup]\ncleanup_action = archive\n"
                                                                 f"archive_directory = {archive}\n"))
    d.wait_log(r"Configuration reloaded; changed: .*cleanup_action")
    make_files(workspace.inbox, [("cam/b.mp4", b"second clip")])
    d.wait_until(lambda: by_event(out, "archived"), what="the archived hook")
    (arch,) = by_event(out, "archived")
    assert arch["S3U_PATH"] == str(archive / "cam" / "b.mp4") and arch["S3U_KEY"] == "cam/b.mp4"
    assert Path(arch["S3U_PATH"]).read_bytes() == b"second clip"
    assert d.stop() == 0
    assert len(seen(out)) == 5  # each event once
    assert status(workspace)["hooks"] == {"pending": 0, "delivered": 5, "given_up": 0, "last_error": None}


def test_the_webhook_is_retried_until_its_receiver_answers_and_its_url_gets_the_object(workspace, s3_client):
    port = _free_port()
    with Receiver([503]) as rx:
        configure(workspace, {"webhook_url": rx.url, "presign_ttl": "1h"}, daemon={"metrics_address": port})
        d = workspace.start()
        d.wait_log("Watching")
        make_files(workspace.inbox, [("cam/c.mp4", b"the footage")])
        d.wait_until(lambda: len(rx.received) == 2, what="the webhook posted twice (503, then 200)")
        d.wait_log(r"Hooks: webhook \(uploaded cam/c\.mp4\) failed \(attempt 1 of 20; tried again in 2s\): HTTP 503")
        first, second = (r["body"] for r in rx.received)
        metrics = d.wait_until(lambda: _delivered(port), what="the delivery counted in /metrics")
    first.pop("url")  # signed at each attempt: valid presign_ttl from the delivery
    assert first == {k: v for k, v in second.items() if k != "url"}
    assert second["event"] == "uploaded" and second["key"] == "cam/c.mp4"
    assert (second["bucket"], second["size"], second["path"]) == (workspace.bucket, 11,
                                                                  str(workspace.inbox / "cam" / "c.mp4"))
    assert second["etag"] == hashlib.md5(b"the footage").hexdigest() and rx.received[0]["type"] == "application/json"
    # the presigned URL: a plain GET, no credentials, gets the object's bytes from SeaweedFS
    assert "X-Amz-Signature=" in second["url"]
    with urllib.request.urlopen(second["url"], timeout=10) as resp:
        assert resp.read() == b"the footage"
    assert 's3_uploader_hook_deliveries_total{event="uploaded",result="retried",target="webhook"} 1.0' in metrics
    assert d.stop() == 0
    assert status(workspace)["hooks"]["last_error"] == "HTTP 503 Service Unavailable"


def test_a_hanging_hook_is_killed_at_hook_timeout_and_delays_no_upload_nor_the_shutdown(workspace, s3_client):
    hang = workspace.tmp / "hang.py"  # its path marks its processes: none may be left behind
    hang.write_text("import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', "
                    "'import time; time.sleep(300)', sys.argv[0]])\ntime.sleep(300)\n")
    configure(workspace, {"on_uploaded": f"{sys.executable} {hang}", "hook_timeout": "3s"})
    d = workspace.start()
    d.wait_log("Watching")
    files = make_files(workspace.inbox, [(f"cam/{i}.mp4", b"v%d" % i) for i in range(8)])
    # every upload is done while the four hook workers are stuck in their hooks
    out = d.wait_log(r"Successfully uploaded", count=len(files), timeout=60)
    assert "killed after hook_timeout" not in out
    d.wait_until(lambda: len(_processes(hang)) >= 8, what="the hooks and their children running")
    d.wait_log(r"Hooks: hook on_uploaded \(uploaded cam/\d\.mp4\) failed \(attempt 1 of 20; tried again in 2s\): "
               r"killed after hook_timeout \(3s\)", timeout=30)
    for rel, data in files.items():
        assert get_bytes(s3_client, workspace.bucket, rel) == data
    # stopping while hooks hang again: killed at once, their events kept for the next start
    running = d.wait_until(lambda: _processes(hang), what="hooks running again")
    t0 = time.monotonic()
    assert d.stop() == 0
    took = time.monotonic() - t0
    assert took < 10
    print(f"\nstopped in {took:.2f}s, {len(running)} hook process(es) running at SIGTERM")
    wait_for(lambda: not _processes(hang), timeout=10, what="every hook process killed")
    assert status(workspace)["hooks"]["pending"] == len(files)


def test_an_event_is_delivered_after_a_kill_9_between_the_upload_and_its_delivery(workspace, s3_client):
    started, release, delivered = (workspace.tmp / n for n in ("started.jsonl", "release", "delivered.jsonl"))
    configure(workspace, {"on_uploaded": hook(workspace, started, release)})
    d = workspace.start()
    d.wait_log("Watching")
    make_files(workspace.inbox, [("cam/k.mp4", b"killed")])
    d.wait_until(lambda: seen(started), what="the hook running")
    assert get_bytes(s3_client, workspace.bucket, "cam/k.mp4") == b"killed"  # uploaded, not yet delivered
    d.kill()
    release.touch()  # the orphaned hook ends
    assert status(workspace)["hooks"]["pending"] == 1
    configure(workspace, {"on_uploaded": hook(workspace, delivered)})
    d = workspace.start()
    d.wait_until(lambda: seen(delivered), what="the event delivered after the restart")
    (env,) = seen(delivered)
    assert (env["S3U_EVENT"], env["S3U_KEY"]) == ("uploaded", "cam/k.mp4")
    assert d.stop() == 0
    assert "Successfully uploaded" not in d.output()  # not sent again: only its event was left
    assert status(workspace)["hooks"] == {"pending": 0, "delivered": 1, "given_up": 0, "last_error": None}


def test_a_reload_changes_the_command_for_the_next_event(workspace, s3_client):
    first, second = workspace.tmp / "first.jsonl", workspace.tmp / "second.jsonl"
    configure(workspace, {"on_uploaded": hook(workspace, first)})
    d = workspace.start()
    d.wait_log("Watching")
    make_files(workspace.inbox, [("a.mp4", b"a")])
    d.wait_until(lambda: seen(first), what="the first command")
    text = workspace.config_path.read_text()
    workspace.config_path.write_text(text.replace(str(first), str(second)))
    d.wait_log(r"Configuration reloaded; changed: \[hooks\] on_uploaded")
    make_files(workspace.inbox, [("b.mp4", b"b")])
    d.wait_until(lambda: seen(second), what="the second command")
    assert d.stop() == 0
    assert [e["S3U_REL"] for e in seen(first)] == ["a.mp4"] and [e["S3U_REL"] for e in seen(second)] == ["b.mp4"]


def _processes(marker: Path) -> List[str]:
    r = subprocess.run(["pgrep", "-f", str(marker)], capture_output=True, text=True)
    return r.stdout.split()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _delivered(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return ""
    done = ('s3_uploader_hook_deliveries_total{event="uploaded",result="delivered",target="webhook"} 1.0',
            "s3_uploader_hook_events_pending 0.0")
    return text if all(line in text for line in done) else ""

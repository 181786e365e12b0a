"""hooks.py: delivering the recorded events (real commands, a local HTTP receiver, MemoryRemote) on
the Hooks' own threads; never waiting on a hook longer than hook_timeout, nor at stop."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from helpers import Receiver, pid_alive, wait_for

from s3_uploader import events
from s3_uploader.config import Config, parse_config
from s3_uploader.hooks import Hooks
from s3_uploader.remote import MemoryRemote
from s3_uploader.store import Store

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the hooks here are POSIX commands")

# a hook that appends its S3U_* environment, as one JSON line, to the file named by its argument
DUMP = "import json, os, sys; open(sys.argv[1], 'a').write(json.dumps({k: v for k, v in os.environ.items() " \
       "if k.startswith('S3U_')}) + '\\n')"


def dump_hook(out: Path) -> str:
    return f"{sys.executable} -c \"{DUMP}\" {out}"


def config(tmp: Path, **hooks: object) -> Config:
    lines = "\n".join(f"{k} = {v}" for k, v in hooks.items())
    return parse_config(f"[watch]\ndirectory_to_watch = {tmp / 'inbox'}\n[s3]\nbucket = memory-bucket\n"
                        f"[hooks]\n{lines}\n")


class Rig:
    """A store, a MemoryRemote and a started Hooks whose config the test can swap (a reload)."""

    def __init__(self, tmp: Path, **hooks: object):
        self.tmp = tmp
        self.cfg = config(tmp, **hooks)
        self.store = Store(tmp / "s.db").start()
        self.remote = MemoryRemote()
        self.hooks = Hooks(self.store, lambda: self.cfg, lambda: self.remote)
        self.store.events = self.hooks.event_log()
        self.hooks.start()

    def upload(self, rel: str, key: str = "") -> None:
        self.store.discover(rel, key or f"cams/{rel}", 3, 7, 9)
        self.store.start_upload(rel, 3, 7, 9)
        self.store.finish_upload(rel, 3, 7, 9, "md5", '"e7"')

    def rows(self) -> List[tuple]:
        with self.store.connection() as conn:
            return conn.execute("SELECT target, event, state, attempts, last_error FROM hook_events").fetchall()

    def result(self, result: str, target: str = "command", event: str = "uploaded") -> int:
        return self.hooks.counts()[(target, event, result)]

    def close(self) -> None:
        self.hooks.stop()
        for t in self.hooks.threads():
            t.join(10)
        self.store.close()


@pytest.fixture
def rig(tmp_path) -> Iterator[Any]:
    made: List[Rig] = []

    def make(**hooks: object) -> Rig:
        made.append(Rig(tmp_path, **hooks))
        return made[-1]
    yield make
    for r in made:
        r.close()


def lines(path: Path) -> List[Dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_hook_runs_once_per_event_with_the_event_in_its_environment(rig, tmp_path):
    out = tmp_path / "seen.jsonl"
    r = rig(on_uploaded=dump_hook(out), presign_ttl="1h")
    r.upload("front/clip 1.mp4")
    wait_for(lambda: r.result("delivered") == 1, what="the hook delivered")
    (env,) = lines(out)
    assert env == {"S3U_EVENT": "uploaded", "S3U_PATH": str(tmp_path / "inbox" / "front" / "clip 1.mp4"),
                   "S3U_REL": "front/clip 1.mp4", "S3U_BUCKET": "memory-bucket", "S3U_KEY": "cams/front/clip 1.mp4",
                   "S3U_SIZE": "3", "S3U_ETAG": "e7", "S3U_ERROR": "",
                   "S3U_URL": "memory://memory-bucket/cams/front/clip%201.mp4?X-Amz-Expires=3600",
                   "S3U_TIME": env["S3U_TIME"]}
    assert r.rows() == []  # delivered: its row is gone, counted
    with r.store.connection() as conn:
        assert events.summary(conn)["delivered"] == 1


def test_a_file_whose_name_is_not_utf8_reaches_its_hook_with_its_own_bytes(rig, tmp_path):
    out = tmp_path / "seen.jsonl"
    r = rig(on_uploaded=dump_hook(out))
    rel = os.fsdecode(b"caf\xe9.mp4")
    r.upload(rel, key="cams/caf%E9.mp4")  # (keys.py's escape of the byte)
    wait_for(lambda: r.result("delivered") == 1, what="the hook delivered")
    (env,) = lines(out)
    assert os.fsencode(env["S3U_REL"]) == b"caf\xe9.mp4" and os.fsencode(env["S3U_PATH"]).endswith(b"/caf\xe9.mp4")


def test_a_hook_that_hangs_is_killed_with_its_children_at_hook_timeout_and_tried_again(rig, tmp_path, caplog):
    pid_file = tmp_path / "child.pid"
    r = rig(on_uploaded=f"/bin/sh -c 'sleep 300 & echo $! > {pid_file}; wait'", hook_timeout="0.5s")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="s3_uploader.hooks"):
        r.upload("a")
        wait_for(lambda: r.result("retried") == 1, timeout=10, what="the hanging hook killed")
        took = time.monotonic() - started
        # the count is taken before the warning is written: wait for the line, not only the count
        wait_for(lambda: "tried again in 2s" in caplog.text, timeout=5, what="the retry's warning")
    child = int(pid_file.read_text())
    wait_for(lambda: not pid_alive(child), timeout=5, what="its child, in its process group, killed too")
    assert 0.5 <= took < 5, took
    ((target, event, state, attempts, error),) = r.rows()
    assert (state, attempts) == ("pending", 1) and error.startswith("killed after hook_timeout (0.5s)")


def test_stop_kills_a_running_hook_at_once_and_leaves_its_event_pending_untried(rig, tmp_path):
    started = tmp_path / "started"
    r = rig(on_uploaded=f"/bin/sh -c 'touch {started}; sleep 300'", hook_timeout="10m")
    r.upload("a")
    wait_for(started.exists, what="the hook running")
    t0 = time.monotonic()
    r.hooks.stop()
    for t in r.hooks.threads():
        t.join(5)
        assert not t.is_alive(), t.name
    assert time.monotonic() - t0 < 3
    assert r.rows() == [("command", "uploaded", "pending", 0, None)]  # for the next start, no attempt counted


def test_a_reload_applies_to_the_next_event_and_a_removed_target_drops_its_pending_events(rig, tmp_path):
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    r = rig(on_uploaded=dump_hook(first))
    r.upload("a")
    wait_for(lambda: r.result("delivered") == 1, what="the first command")
    r.cfg = config(tmp_path, on_uploaded=dump_hook(second))
    r.upload("b")
    wait_for(lambda: r.result("delivered") == 2, what="the second command")
    assert [e["S3U_REL"] for e in lines(first)] == ["a"] and [e["S3U_REL"] for e in lines(second)] == ["b"]
    # an event recorded while the hook was set, whose hook a reload then removed: dropped, not run
    r.cfg = config(tmp_path, on_uploaded="false", webhook_url="http://127.0.0.1:9/")
    r.hooks.stop()
    for t in r.hooks.threads():
        t.join(5)
    r.upload("c")
    r.cfg = config(tmp_path)
    r.hooks = Hooks(r.store, lambda: r.cfg, lambda: r.remote).start()
    wait_for(lambda: r.rows() == [], what="both events dropped")
    assert sum(r.hooks.counts().values()) == 0


def test_a_failing_hook_is_given_up_after_hook_max_attempts_with_one_error_line(rig, caplog):
    with caplog.at_level(logging.WARNING, logger="s3_uploader.hooks"):
        r = rig(on_uploaded="/bin/sh -c 'echo no route to the phone >&2; exit 3'", hook_max_attempts=1)
        r.upload("a")
        wait_for(lambda: r.result("given_up") == 1, what="given up")
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1 and "given up after 1 attempt(s): exit status 3: no route to the phone" in errors[0].message
    assert r.rows() == [("command", "uploaded", "given_up", 1, "exit status 3: no route to the phone")]


def test_a_command_that_cannot_be_started_is_a_failed_attempt(rig):
    r = rig(on_uploaded="/nonexistent/notify")
    r.upload("a")
    wait_for(lambda: r.result("retried") == 1, what="a failed attempt")
    assert r.rows()[0][4].startswith("cannot run /nonexistent/notify")


def test_the_webhook_posts_json_and_only_a_2xx_answer_delivers(rig):
    ev = events.Event(1, "webhook", "uploaded", "a", "/in/a", "memory-bucket", "cams/a", 3, '"e"', None, 0.0, 0)
    with Receiver([500, 302]) as rx:
        r = rig(webhook_url=rx.url)
        assert r.hooks.post(rx.url, {"n": 1}, 5, r.cfg) == "HTTP 500 Internal Server Error"
        assert r.hooks.post(rx.url, {"n": 2}, 5, r.cfg) == "HTTP 302 Found"  # not followed: urllib would GET
        assert r.hooks.deliver(ev, r.cfg) is None
    assert [x["body"] for x in rx.received[:2]] == [{"n": 1}, {"n": 2}]
    assert rx.received[2] == {"type": "application/json", "body": {
        "event": "uploaded", "bucket": "memory-bucket", "key": "cams/a", "size": 3, "etag": "e", "path": "/in/a",
        "rel": "a", "url": "", "time": "1970-01-01T00:00:00Z", "error": None}}


def test_a_webhook_that_answers_too_late_is_a_failed_attempt(rig):
    with Receiver(slow=1.5) as rx:
        r = rig(webhook_url=rx.url)
        t0 = time.monotonic()
        error = r.hooks.post(rx.url, {}, 0.3, r.cfg)
        took = time.monotonic() - t0
    assert error is not None and "timed out" in error and took < 1.4, (error, took)

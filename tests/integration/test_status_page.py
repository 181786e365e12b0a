"""The status page on metrics_address, in a real browser (headless Chromium, Debian's ``chromium``)
against a daemon that uploaded files to the real test server: the charts drew, the numbers on the
page are those of ``status --json``, the page is self-contained and read-only, and its history
survives a restart. The browser's screenshot is kept in tests/artifacts/ (path printed)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from helpers import list_keys, make_files, status, wait_for
from inprocess import running_daemon

from s3_uploader.embedded import free_port
from s3_uploader.remote import memory_error

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
REFUSED = "<img src=x onerror=document.title='pwned'>.bin"  # parked; a name that is also markup
FILES = [("cam1/a.mp4", b"a" * 3000), ("cam1/b.jpg", b"b" * 1000), ("cam2/c.mp4", b"c" * 200_000),
         ("d.txt", b"d" * 10), ("cam2/e.mp4", b"e" * 2_000_000)]  # the last one by the upload workers


def request(url: str, method: str = "GET") -> Tuple[int, Dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, data=b"{}" if method in ("POST", "PUT") else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> Any:
    code, _, body = request(url)
    assert code == 200, (url, code, body)
    return json.loads(body)


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    """Run headless Chromium on ``url`` with ``args``; its stdout. Every process it started is gone
    when this returns (it runs in its own process group, which is killed after)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run the suite with `make test`, which installs Debian's chromium "
                    "when run as root, or `apt-get install chromium`")
    # --no-sandbox: Chromium's sandbox refuses to run as root (the suite runs as root in CI)
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000", *args, url]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         start_new_session=True, text=True)
    try:
        out, err = p.communicate(timeout=120)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    assert p.returncode == 0, err[-3000:]
    return out


class Dom(HTMLParser):
    """What the test reads of the page as the browser left it: each element with an id (its
    attributes and text), every SVG path's ``d`` by chart id, and how many of each tag there are."""

    def __init__(self, html: str):
        super().__init__()
        self.by_id: Dict[str, Dict[str, Any]] = {}
        self.paths: Dict[str, List[str]] = {}
        self.tags: Dict[str, int] = {}
        self.cells: List[str] = []  # text of every table cell
        self._open: List[Tuple[str, Optional[str]]] = []
        self._svg: Optional[str] = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "svg":
            self._svg = a.get("id")
        if tag == "path" and self._svg:
            self.paths.setdefault(self._svg, []).append(a.get("d") or "")
        if a.get("id"):
            self.by_id[a["id"]] = {"attrs": a, "text": ""}
        if tag == "td":
            self.cells.append("")
        if tag not in ("path", "line", "meta", "br"):
            self._open.append((tag, a.get("id")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg = None
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.by_id[ident]["text"] += data
        if self._open and any(t == "td" for t, _ in self._open):
            self.cells[-1] += data

    def value(self, ident: str) -> str:
        return self.by_id[ident]["attrs"].get("data-value")


def refuse_some(d: Any) -> None:
    """The daemon's S3 answers InvalidObjectName for :data:`REFUSED` (so it is parked at once)."""
    remote = d.remote
    put, soon = remote.put_object, getattr(remote, "put_object_soon", None)

    def refused(key: str) -> bool:
        return "onerror" in key

    def put_object(key: str, *args: Any, **kw: Any) -> Any:
        if refused(key):
            raise memory_error("InvalidObjectName", "the test's server refuses this name")
        return put(key, *args, **kw)

    def put_object_soon(key: str, *args: Any, **kw: Any) -> Any:
        if refused(key):
            raise memory_error("InvalidObjectName", "the test's server refuses this name")
        return soon(key, *args, **kw)
    remote.put_object = put_object
    if soon is not None:
        remote.put_object_soon = put_object_soon


def without_ages(s: Dict[str, Any]) -> Dict[str, Any]:
    s = json.loads(json.dumps(s))
    if s.get("oldest_waiting"):
        s["oldest_waiting"].pop("age_seconds")
    return s


def test_the_page_in_a_real_browser_draws_the_charts_and_shows_what_status_shows(workspace, aws_env, s3_client,
                                                                                 tmp_path, capsys):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    workspace.config(daemon={"metrics_address": port})
    with running_daemon(workspace.config_path) as d:
        refuse_some(d)
        make_files(workspace.inbox, FILES + [(REFUSED, b"refused")])
        wait_for(lambda: len(list_keys(s3_client, workspace.bucket)) == len(FILES), what="the uploads")
        wait_for(lambda: get_json(f"{base}/api/status")["counts"]["parked"] == 1, what="the refused file parked")

        # /api/status is the status --json object (the same function builds both)
        def same() -> Optional[Dict[str, Any]]:
            api = get_json(f"{base}/api/status")
            return api if without_ages(api) == without_ages(status(workspace)) else None
        api = wait_for(same, what="/api/status to equal status --json")
        assert api["counts"]["uploaded"] == len(FILES) and api["waiting"] == 1
        assert api["parked"][0]["path"] == REFUSED and api["parked"][0]["kind"] == "invalid"
        # the recorder counts an upload for the history just after it records the row: wait for both
        history = wait_for(lambda: (h := get_json(f"{base}/api/history?range=24h"))["totals"]["files"] == len(FILES)
                           and h, what="the history to count every upload")
        assert history["totals"]["bytes"] == sum(len(b) for _, b in FILES)

        dom = Dom(chromium(tmp_path, base + "/", "--dump-dom"))
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        shot.unlink(missing_ok=True)
        chromium(tmp_path, base + "/", f"--screenshot={shot}", "--window-size=1280,1700")
        with capsys.disabled():  # in the log of a passing run too
            print(f"\nstatus page screenshot (headless Chromium): {shot}")

    assert dom.by_id["health"]["text"] == "healthy"
    assert dom.by_id["error"]["text"] == ""
    # the numbers on the page are those of status --json
    for state, n in api["counts"].items():
        assert dom.value(f"count-{state}") == str(n), state
    assert (dom.value("waiting"), dom.value("total")) == (str(api["waiting"]), str(api["total"]))
    assert dom.by_id["count-uploaded"]["text"] == f"{len(FILES)}"
    assert REFUSED in dom.cells  # as text, in the parked table and as the oldest waiting file
    assert REFUSED in dom.by_id["oldest"]["text"]
    assert dom.tags.get("img", 0) == 0 and dom.by_id  # the name stayed text: no element came of it
    # the hooks' line shows when status has one (the hooks branch adds it)
    assert ("hidden" in dom.by_id["hooks-section"]["attrs"]) == ("hooks" not in api)
    # the charts drew: every chart of both ranges is there, and those with data have a non-empty path
    for rng in ("24h", "7d"):
        for series in ("files", "bytes", "backlog", "failures"):
            assert f"chart-{rng}-{series}" in dom.paths, f"chart-{rng}-{series}"
        assert dom.value(f"total-{rng}-files") == str(len(FILES))
        assert dom.value(f"total-{rng}-bytes") == str(sum(len(b) for _, b in FILES))
        for series in ("files", "bytes", "backlog"):
            (d_attr,) = dom.paths[f"chart-{rng}-{series}"]
            assert re.match(r"M\d", d_attr), (rng, series, d_attr)
    assert shot.stat().st_size > 20_000  # a page with charts, not a blank one


def test_the_page_is_self_contained_and_read_only(workspace, aws_env):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    workspace.config(daemon={"metrics_address": f"127.0.0.1:{port}"})
    with running_daemon(workspace.config_path):
        code, headers, page = request(base + "/")
        assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        html = page.decode()
        # nothing fetched from elsewhere: no linked file, no import, no URL but the SVG namespace's name
        assert not re.search(r"<link|<img|<iframe|@import|url\(|\bsrc=|\bhref=", html)
        assert re.findall(r"https?://[^\s\"']+", html) == ["http://www.w3.org/2000/svg"]
        for method in ("POST", "PUT", "DELETE", "PATCH", "PROPFIND"):
            for path in ("/", "/api/status", "/metrics"):
                code, headers, body = request(base + path, method)
                assert (code, headers.get("Allow")) == (405, "GET, HEAD"), (method, path, code)
        code, headers, body = request(base + "/api/status", "HEAD")
        assert code == 200 and body == b"" and int(headers["Content-Length"]) > 0
        code, _, body = request(base + "/api/history?range=1y")
        assert code == 400 and b"24h, 7d" in body
        assert get_json(base + "/api/history?range=7d")["step"] == 3600


def test_the_history_survives_a_restart(workspace, aws_env, s3_client):
    port = free_port()
    workspace.config(daemon={"metrics_address": port})
    with running_daemon(workspace.config_path):
        make_files(workspace.inbox, FILES[:3])
        wait_for(lambda: len(list_keys(s3_client, workspace.bucket)) == 3, what="the uploads")
    with running_daemon(workspace.config_path) as d:
        assert d.stats.uploaded_files == 0  # nothing uploaded by this process
        week = get_json(f"http://127.0.0.1:{port}/api/history?range=7d")
        assert week["totals"]["files"] == 3
        assert week["totals"]["bytes"] == sum(len(b) for _, b in FILES[:3])

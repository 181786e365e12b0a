"""contrib/prometheus/alerts.yml and contrib/grafana/s3-uploader.json: promtool accepts the rules and
their unit tests pass, every dashboard query is valid PromQL, and every metric either names is one a
running daemon serves on /metrics."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Iterator, List, Set

import pytest
from helpers import list_keys, make_files, wait_for
from inprocess import running_daemon
from prometheus_client.parser import text_string_to_metric_families

from s3_uploader.embedded import free_port

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
ALERTS = CONTRIB / "prometheus" / "alerts.yml"
ALERT_TESTS = CONTRIB / "prometheus" / "alerts.test.yml"
DASHBOARD = CONTRIB / "grafana" / "s3-uploader.json"
METRIC = re.compile(r"\bs3_uploader_[a-z0-9_]+")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed: run the suite with `make test`, which installs Debian's prometheus "
                    "package when run as root, or `apt-get install prometheus`")
    return subprocess.run([tool, *args], cwd=str(cwd), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def dashboard_queries() -> Iterator[str]:
    """Every PromQL query of the dashboard: its panels' targets and its template variables'."""
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        for target in panel["targets"]:
            yield target["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            yield var["definition"]


def test_promtool_accepts_the_alert_rules_and_their_unit_tests_pass():
    r = promtool("check", "rules", ALERTS.name, cwd=ALERTS.parent)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERTS.parent)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    names = re.findall(r"^\s*- alert: (\S+)", ALERTS.read_text(), re.M)
    assert {"S3UploaderUnhealthy", "S3UploaderOldestWaitingTooOld", "S3UploaderFilesParked",
            "S3UploaderDiskSpaceLow", "S3UploaderHookDeliveriesFailing"} <= set(names)


def test_every_dashboard_query_is_valid_promql(tmp_path):
    # promtool has no command for a bare query: each becomes a recording rule, which it parses
    queries = [q for q in dashboard_queries() if not q.startswith("label_values(")]
    assert len(queries) >= 15
    rules: List[str] = ["groups:", "  - name: dashboard", "    rules:"]
    for i, q in enumerate(queries):
        rules += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(q.replace('$instance', '.*'))}"]
    (tmp_path / "dashboard.yml").write_text("\n".join(rules) + "\n")
    r = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def served_names(text: str) -> Set[str]:
    """Every series name a scrape of ``text`` can have, also for families with no sample yet (a
    counter by reason before any failure)."""
    out: Set[str] = set()
    for family in text_string_to_metric_families(text):
        out |= {s.name for s in family.samples}
        if family.type == "counter":
            out.add(family.name + "_total")
        elif family.type == "histogram":
            out |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            out.add(family.name)
    return out


def test_every_metric_the_alerts_and_the_dashboard_use_is_served_by_a_running_daemon(workspace, aws_env, s3_client):
    used = set(METRIC.findall(ALERTS.read_text())) | set(METRIC.findall(DASHBOARD.read_text()))
    assert len(used) >= 15
    port = free_port()
    workspace.config(daemon={"metrics_address": port})
    with running_daemon(workspace.config_path):
        make_files(workspace.inbox, [("a.bin", b"a" * 100)])
        wait_for(lambda: len(list_keys(s3_client, workspace.bucket)) == 1, what="the upload")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            served = served_names(r.read().decode())
    assert sorted(used - served) == []

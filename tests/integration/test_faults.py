"""Faults between the daemon and S3, injected by a proxy in front of the real S3-compatible server.

Throttling, 500s, connection resets, timeouts, a 200 carrying an error, a long outage and
credential errors: every file still arrives byte-identical, and each kind of failure is reported
as what it is.
"""
from __future__ import annotations

import json
import os
import random
import re

import urllib.request

import pytest
from faultproxy import RANDOM_FAULTS
from helpers import cli, get_bytes, list_keys, make_files, wait_for

from s3_uploader.embedded import free_port

pytestmark = pytest.mark.proxy(seed=20261121, timeout_seconds=3.0)

MiB = 1024 * 1024
FAST = {"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB", "read_timeout": "2s",
        "connect_timeout": "2s", "retry_backoff_base": "0.2s", "retry_backoff_max": "1s"}


def assert_intact(s3_client, bucket, files, prefix=""):
    keys = list_keys(s3_client, bucket)
    assert keys == {prefix + rel: len(data) for rel, data in files.items()}
    for rel, data in files.items():
        assert get_bytes(s3_client, bucket, prefix + rel) == data, rel


def open_uploads(s3_client, bucket):
    return s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_every_file_arrives_intact_through_a_proxy_injecting_faults_at_a_seeded_rate(workspace, proxy, s3_client):
    rng = random.Random(7)
    spec = [(f"cam{i % 3}/clip{i:02d}.bin", rng.randbytes(rng.randint(0, 200_000))) for i in range(40)]
    spec += [("big/a.mp4", rng.randbytes(7 * MiB)), ("big/b.mp4", rng.randbytes(12 * MiB + 5))]
    files = make_files(workspace.inbox, spec)
    proxy.set_faults(0.25)
    # every kind at least once, whatever the dice say; and the error hidden in a 200 for Complete
    proxy.force("PutObject", *RANDOM_FAULTS)
    proxy.force("UploadPart", "reset_response", "slowdown")
    proxy.force("CompleteMultipartUpload", "error200")
    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload={**FAST, "upload_workers": 4})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env(), timeout=150)
    assert r.returncode == 0, r.stderr[-4000:]
    assert_intact(s3_client, workspace.bucket, files)
    injected = proxy.faults_injected()
    assert set(RANDOM_FAULTS) | {"error200"} <= set(injected), injected
    assert sum(injected.values()) >= 20, injected
    assert open_uploads(s3_client, workspace.bucket) == []
    status = json.loads(cli("status", "--json", "-c", str(workspace.config_path)).stdout)
    assert status["counts"]["uploaded"] == len(files) and status["waiting"] == 0


def test_a_long_outage_parks_nothing_and_every_file_goes_when_the_endpoint_recovers(workspace, proxy, s3_client):
    port = free_port()
    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload={**FAST, "max_retries": 2},
                     daemon={"log_level": "DEBUG", "metrics_address": f"127.0.0.1:{port}"})
    d = workspace.start()
    d.wait_log("Watching")
    proxy.outage(True)
    files = make_files(workspace.inbox, [(f"during-outage/{i}.jpg", os.urandom(1000 + i)) for i in range(6)]
                       + [("during-outage/big.mp4", os.urandom(6 * MiB))])
    # more failed attempts than max_retries for every file, each backing off, none parked
    for rel in files:
        d.wait_log(rf"Upload of {re.escape(rel)} failed .*retry ([3-9]|\d\d+)\b", timeout=90)
    assert list_keys(s3_client, workspace.bucket) == {}
    status = json.loads(cli("status", "--json", "-c", str(workspace.config_path)).stdout)
    assert status["counts"]["parked"] == 0
    assert status["counts"]["failed"] + status["counts"]["uploading"] + status["counts"]["pending"] == len(files)
    # the outage is a state: status, /healthz and the metrics say so
    assert status["outage"]["endpoint"] == proxy.endpoint and "network" in status["outage"]["error"]
    text = cli("status", "-c", str(workspace.config_path)).stdout
    assert f"S3 endpoint {proxy.endpoint}: NOT ANSWERING since " in text
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        body = r.read().decode()
    assert r.status == 200 and body.startswith(f"ok; degraded: S3 endpoint {proxy.endpoint} not answering for "), body
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert "s3_uploader_endpoint_outages_total 1.0" in r.read().decode()
    proxy.outage(False)
    wait_for(lambda: len(list_keys(s3_client, workspace.bucket)) == len(files), timeout=60,
             what="every file to arrive after the outage")
    assert_intact(s3_client, workspace.bucket, files)
    d.wait_log(r"INFO +S3 endpoint \S+ answers again after \d+s")
    wait_for(lambda: json.loads(cli("status", "--json", "-c", str(workspace.config_path)).stdout)["outage"] is None,
             what="status to show the outage over")
    assert d.stop() == 0
    out = d.output()
    assert "parked" not in out.replace("not parked", "")
    attempts = [int(n) for n in re.findall(r"Uploading during-outage/0\.jpg attempt (\d+)", out)]
    assert max(attempts) > 3, attempts
    # one WARNING when it started, not one per file per attempt: those went to DEBUG
    warnings = [x for x in out.splitlines() if " WARNING " in x]
    assert len([x for x in warnings if "is not answering" in x]) == 1, "\n".join(warnings)
    assert len([x for x in warnings if "Upload of" in x]) <= 2, warnings
    assert len(re.findall(r"DEBUG .*Upload of during-outage/\S+ failed \(network", out)) >= 3 * len(files) - 2


def test_wrong_credentials_at_start_are_reported_as_such_with_exit_code_1(workspace):
    workspace.config()
    env = dict(workspace.server.env(), AWS_SECRET_ACCESS_KEY="not-the-secret")
    r = cli("once", "-c", str(workspace.config_path), env=env, timeout=60)
    assert r.returncode == 1
    assert "access denied: check the credentials" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_credential_error_while_running_is_logged_as_such_and_retried_at_the_cap_not_blindly(
        workspace, proxy, s3_client):
    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload={**FAST, "max_retries": 1})
    d = workspace.start()
    d.wait_log("Watching")
    proxy.force("PutObject", "auth", "auth", "auth")
    files = make_files(workspace.inbox, [("secret-fail.txt", b"x" * 4321)])
    d.wait_log(r"Successfully uploaded secret-fail\.txt", timeout=60)
    out = d.output()
    lines = re.findall(r"ERROR.*Upload of secret-fail\.txt failed: credentials/permission problem "
                       r"\(.*SignatureDoesNotMatch.*\); retrying in 1s; check the credentials, the clock and the "
                       r"bucket policy", out)
    assert len(lines) == 1, out[-3000:]  # once per file and reason: the next two attempts said nothing new
    # one request per attempt: botocore does not repeat a 403, and the daemon waits retry_backoff_max
    assert proxy.count("PutObject", key="secret-fail.txt") == 4
    assert "parked" not in out
    assert_intact(s3_client, workspace.bucket, files)
    assert d.stop() == 0


def test_a_200_response_with_an_error_body_to_complete_is_retried_and_the_object_ends_up_intact(
        workspace, proxy, s3_client):
    files = make_files(workspace.inbox, [("video.mp4", os.urandom(12 * MiB + 321))])
    # four in a row: more than botocore retries by itself, so the daemon's own retry has to finish it
    proxy.force("CompleteMultipartUpload", "error200", "error200", "error200", "error200")
    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload={**FAST, "max_concurrency": 1})
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env(), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_intact(s3_client, workspace.bucket, files)
    assert re.search(r"Upload of video\.mp4 failed \(server: .*InternalError", r.stderr), r.stderr[-3000:]
    assert "Resuming multipart upload of video.mp4: 3 of 3 parts already in S3" in r.stderr
    assert proxy.count("CompleteMultipartUpload") == 5
    assert proxy.count("UploadPart", reached=True) == 3  # the parts were not sent again
    assert proxy.count("CreateMultipartUpload") == 1
    assert open_uploads(s3_client, workspace.bucket) == []


def test_an_endpoint_down_at_start_up_does_not_stop_the_daemon_and_files_go_when_it_answers(
        workspace, proxy, s3_client):
    proxy.outage(True)
    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload=FAST, daemon={"log_level": "DEBUG"})
    d = workspace.start()
    d.wait_log(r"WARNING S3 endpoint http://127\.0\.0\.1:\d+ is not answering \(.*\); starting anyway", timeout=60)
    files = make_files(workspace.inbox, [("boot/first.jpg", os.urandom(2000)), ("boot/second.jpg", os.urandom(3000))])
    d.wait_log(r"DEBUG .*Upload of boot/first\.jpg failed \(network", timeout=60)  # the outage began at start
    assert d.proc.poll() is None
    status = json.loads(cli("status", "--json", "-c", str(workspace.config_path)).stdout)
    assert status["outage"]["endpoint"] == proxy.endpoint
    proxy.outage(False)
    wait_for(lambda: len(list_keys(s3_client, workspace.bucket)) == len(files), timeout=60,
             what="the files to arrive once the endpoint answers")
    assert_intact(s3_client, workspace.bucket, files)
    d.wait_log(r"INFO +S3 endpoint \S+ answers again after")
    assert d.stop() == 0


def test_once_still_fails_fast_when_the_endpoint_is_down(workspace, proxy):
    proxy.outage(True)
    workspace.config(s3={"endpoint_url": proxy.endpoint}, upload=FAST)
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env(), timeout=120)
    assert r.returncode == 1
    assert (f"S3 bucket {workspace.bucket} does not exist or you don't have access "
            f"(S3 endpoint {proxy.endpoint} is not answering: ") in r.stderr
    assert "Traceback" not in r.stderr

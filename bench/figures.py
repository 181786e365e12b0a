"""The daemon figures: detection latency, an idle daemon over a large uploaded tree, a backlog.

Each figure runs ``s3-uploader run`` (or ``once``) as a child process against the plain server and
returns a dict for the results file; ``print_daemon`` prints them. ``tools`` is the harness's
``run.Tools`` (config files and the environment for the server).
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import workloads
from measure import BUCKET, delete_prefix, log, proc_cpu, proc_rss, run_measured

from s3_uploader.embedded import find_binary

DAEMON_FIGURES = ("latency", "idle", "backlog")


class Daemon:
    """``s3-uploader run`` as a child process, stopped by its PID."""

    def __init__(self, tools: Any, cfg: Path, log_path: Path):
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


def figure_latency(args: argparse.Namespace, tools: Any, client: Any, scratch: Path) -> Dict[str, Any]:
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


def figure_idle(args: argparse.Namespace, tools: Any, client: Any, scratch: Path) -> Dict[str, Any]:
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


def figure_backlog(args: argparse.Namespace, tools: Any, client: Any, scratch: Path) -> Dict[str, Any]:
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

"""A million files at rest (issue 16, section 4): what a daemon costs that watches a tree with nothing to do.

    .venv/bin/python bench/million.py                          # 1,000,000 files: build, seed, measure
    .venv/bin/python bench/million.py --files 20000 --seed-with once --window 120
    .venv/bin/python bench/million.py --work /tmp/m --keep     # keep the tree for another run (--reuse)
    git archive <rev> src | tar -x -C /tmp/old && .venv/bin/python bench/million.py --old-src /tmp/old/src

Builds ``--files`` files as a recorder leaves them: ``cam<c>/<yyyy-mm-dd>/<hh>/cam<c>.<stamp>_<n>.jpg``,
``--per-folder`` files an hour folder (250 by default: 4,000 folders for a million), a few bytes each
(the bytes do not matter at rest; the number of entries does). Then makes them "at rest", the
cheapest honest way:

- ``--seed-with db`` (the default): each file is stat'ed and gets a row in state ``uploaded`` with its
  real signature (size, mtime, inode), its key from the config's own ``KeyMaker`` and the MD5 of its
  bytes, written through the store's schema (``Store`` creates it; rows go in with ``executemany``,
  as ``bench/rows.py`` does). The daemon's scan finds every file settled: nothing to upload.
- ``--seed-with once``: ``s3-uploader once`` uploads the tree to the embedded SeaweedFS (small N).

Every file is stat'ed once more before the runs, so each starts with the same warm caches.

Then ``s3-uploader run`` (``log_level = DEBUG``, so each pass logs its files, folders skipped and
CPU; ``metrics_address`` set, as under systemd) is measured:

- start-up: seconds to the "Watching" log line, and to the end of the first (full) scan;
- idle CPU, quiet: ``/proc/PID/stat`` over ``--quiet-seconds`` between two scans;
- idle CPU, amortised: over ``--window`` seconds that include periodic rescans (``--scan-interval``,
  ``--full-scan-interval``; the window should hold at least one full pass), and projected for the
  defaults (``scan_interval`` 5 min, ``full_scan_interval`` 6 h) from the quiet rate and the measured
  CPU of a quick pass and of a full pass;
- RSS: peak (``VmHWM``) and steady (``VmRSS`` at the end);
- ``s3-uploader status`` wall time while the daemon runs (median of 3);
- the database's size on disk.

``--old-src`` runs another ``src`` tree (put first on PYTHONPATH) over the same tree and database, for a
before/after; code without ``full_scan_interval`` gets no such key. One SeaweedFS server
(``s3_uploader.embedded.LocalS3``: 127.0.0.1, free ports, stopped by PID) serves the runs. Results
print as a markdown table and go to ``bench/results/million-<UTC time>.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rows import db_bytes  # noqa: E402
from measure import proc_cpu, proc_rss  # noqa: E402  (the harness's own readings of /proc/PID)

BUCKET = "million"
DEFAULT_SCAN, DEFAULT_FULL = 300.0, 6 * 3600.0
# "Scan: 1000000 files, 0 to upload, 14.20s (13.90s CPU); quick: 4000 folders, 3990 not listed again";
# older code ends at "CPU)" (every scan full)
SCAN_LINE = re.compile(r"Scan: (?P<files>\d+) files, (?P<todo>\d+) to upload, (?P<secs>[\d.]+)s "
                       r"\((?P<cpu>[\d.]+)s CPU\)(?:; (?P<kind>\w+): (?P<folders>\d+) folders, "
                       r"(?P<skipped>\d+) not listed again)?")


def content(i: int) -> bytes:
    return b"frame %d\n" % i


def build(root: Path, files: int, per_folder: int, cams: int = 8) -> int:
    """Create ``files`` files under ``root``; returns the number of hour folders."""
    t0 = dt.datetime(2026, 9, 1)
    folders = -(-files // per_folder)
    for f in range(folders):
        cam, hour = f % cams, f // cams
        when = t0 + dt.timedelta(hours=hour)
        d = root / f"cam{cam}" / when.strftime("%Y-%m-%d") / when.strftime("%H")
        d.mkdir(parents=True, exist_ok=True)
        stamp = when.strftime("%Y%m%d_%H")
        for j in range(min(per_folder, files - f * per_folder)):
            i = f * per_folder + j
            with open(d / f"cam{cam}.{stamp}{j // 60 % 60:02d}{j % 60:02d}_{i}.jpg", "wb") as fh:
                fh.write(content(i))
    return folders


def seed(db: Path, root: Path, cfg_path: Path) -> int:
    """Rows in state uploaded, one per file under ``root``, with the file's own signature; returns the count."""
    from s3_uploader.config import load_config
    from s3_uploader.keys import KeyMaker
    from s3_uploader.store import Store
    from s3_uploader.version import mtime_ns_of
    Store(db).close()
    keys = KeyMaker(load_config(cfg_path).s3.prefix)
    sql = ("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, md5, etag, attempts, discovered_at, "
           "updated_at, uploaded_at) VALUES(?, ?, ?, 'uploaded', ?, ?, ?, ?, ?, 1, ?, ?, ?)")
    conn = sqlite3.connect(str(db))
    conn.execute("BEGIN")
    now, n, batch = time.time(), 0, []
    for dirpath, _dirs, names in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            rel = f"{rel_dir}/{name}"
            i = int(name.rsplit("_", 1)[1].split(".")[0])
            md5 = hashlib.md5(content(i)).hexdigest()
            batch.append((rel.encode(), rel_dir.encode(), keys.key_for(rel, st.st_mtime), st.st_size,
                          mtime_ns_of(st), st.st_ino, md5, f'"{md5}"', now, now, now))
        if len(batch) >= 50_000:
            conn.executemany(sql, batch)
            n, batch = n + len(batch), []
    conn.executemany(sql, batch)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return n + len(batch)


def write_config(path: Path, root: Path, db: Path, endpoint: str, port: int, scan: float,
                 full: Optional[float], events: bool = True) -> Path:
    full_line = "" if full is None else f"full_scan_interval = {full:g}s\n"
    full_line += "" if events else "use_events = false\n"
    path.write_text(f"[watch]\ndirectory_to_watch = {root}\nscan_interval = {scan:g}s\n{full_line}"
                    f"[s3]\nbucket = {BUCKET}\nendpoint_url = {endpoint}\n"
                    f"[daemon]\ndb_path = {db}\nlog_level = DEBUG\nmetrics_address = 127.0.0.1:{port}\n")
    return path


def scans(log_path: Path) -> List[Dict[str, Any]]:
    out = []
    for m in SCAN_LINE.finditer(log_path.read_text(errors="replace")):
        out.append({"kind": m["kind"] or "full", "files": int(m["files"]), "to_upload": int(m["todo"]),
                    "secs": float(m["secs"]), "cpu": float(m["cpu"]), "folders_skipped": int(m["skipped"] or 0)})
    return out


def wait_for(pred: Any, timeout: float, proc: subprocess.Popen, what: str) -> float:
    t0 = time.perf_counter()
    while not pred():
        if proc.poll() is not None or time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"the daemon did not reach {what} (exit code {proc.poll()})")
        time.sleep(0.05)
    return time.perf_counter()


def measure(python: str, cfg: Path, env: Dict[str, str], log_path: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """Run the daemon over the tree at rest and take every figure; stops it (by its PID) at the end."""
    out: Dict[str, Any] = {}
    with open(log_path, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen([python, "-m", "s3_uploader", "run", "-c", str(cfg)], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        text = lambda: log_path.read_text(errors="replace")  # noqa: E731
        out["startup_to_watching_s"] = round(wait_for(lambda: "Watching" in text(), 600, proc, "Watching") - t0, 2)
        out["startup_to_first_scan_s"] = round(wait_for(lambda: scans(log_path), 3600, proc, "its first scan")
                                               - t0, 2)
        out["first_scan"] = scans(log_path)[0]
        if out["first_scan"]["to_upload"]:
            raise RuntimeError(f"the tree was not at rest: the first scan found files to upload; see {log_path}")
        # quiet: right after a scan, a window shorter than the time to the next one
        seen = len(scans(log_path))
        c0, w0 = proc_cpu(proc.pid), time.perf_counter()
        time.sleep(args.quiet_seconds)
        c1, w1 = proc_cpu(proc.pid), time.perf_counter()
        out["quiet"] = {"window_s": round(w1 - w0, 1), "cpu_s": round(c1 - c0, 3),
                        "cpu_pct_of_core": round(100 * (c1 - c0) / (w1 - w0), 3),
                        "scans_inside": len(scans(log_path)) - seen}
        status_runs = []
        for _ in range(3):
            t = time.perf_counter()
            r = subprocess.run([python, "-m", "s3_uploader", "status", "-c", str(cfg)], env=env,
                               capture_output=True, text=True)
            status_runs.append(time.perf_counter() - t)
            if r.returncode not in (0, 1):  # 1: not healthy (e.g. no upload yet): status still answered
                raise RuntimeError(f"status failed ({r.returncode}): {r.stderr}")
        out["status_wall_s"] = [round(x, 3) for x in status_runs]
        out["status_wall_median_s"] = round(statistics.median(status_runs), 3)
        seen = len(scans(log_path))
        c0, w0 = proc_cpu(proc.pid), time.perf_counter()
        time.sleep(args.window)
        c1, w1 = proc_cpu(proc.pid), time.perf_counter()
        inside = scans(log_path)[seen:]
        out["amortised"] = {"window_s": round(w1 - w0, 1), "cpu_s": round(c1 - c0, 3),
                            "cpu_pct_of_core": round(100 * (c1 - c0) / (w1 - w0), 3),
                            "scan_interval_s": args.scan_interval, "full_scan_interval_s": args.full_scan_interval,
                            "scans_inside": inside}
        rss, hwm = proc_rss(proc.pid)
        out["rss_steady_mb"], out["rss_peak_mb"] = round(rss / 1e6, 1), round(hwm / 1e6, 1)
        out["projection_at_defaults"] = project(out["quiet"]["cpu_pct_of_core"], scans(log_path))
        return out
    finally:
        proc.terminate()
        proc.wait(120)


def project(quiet_pct: float, passes: List[Dict[str, Any]]) -> Dict[str, Any]:
    """CPU % of one core at the defaults: the quiet rate, plus a quick pass every 5 min and a full pass
    every 6 h (code without quick passes: a full pass every 5 min), from the passes measured."""
    full = [p["cpu"] for p in passes if p["kind"] == "full"]
    quick = [p["cpu"] for p in passes if p["kind"] == "quick"]
    full_cpu = round(statistics.median(full), 3) if full else 0.0
    if quick:
        quick_cpu = round(statistics.median(quick), 3)
        pct = quiet_pct + 100 * (quick_cpu / DEFAULT_SCAN + full_cpu / DEFAULT_FULL)
    else:
        quick_cpu = None
        pct = quiet_pct + 100 * full_cpu / DEFAULT_SCAN
    return {"full_pass_cpu_s": full_cpu, "quick_pass_cpu_s": quick_cpu, "cpu_pct_of_core": round(pct, 3)}


def _passes(passes: List[Dict[str, Any]]) -> str:
    kinds = [p["kind"] for p in passes]
    return ", ".join(f"{kinds.count(k)} {k}" for k in ("quick", "full") if k in kinds) or "no pass"


def markdown(report: Dict[str, Any]) -> str:
    runs = [k for k in ("new", "old") if k in report]
    head = "| figure | target | " + " | ".join(runs) + " |\n|---|---|" + "---|" * len(runs) + "\n"
    rows = [
        ("start-up to \"Watching\"", "< 60 s", lambda r: f"{r['startup_to_watching_s']} s"),
        ("start-up to the end of the first (full) scan", "", lambda r: f"{r['startup_to_first_scan_s']} s"),
        ("full pass (scanner thread CPU)", "", lambda r: f"{r['projection_at_defaults']['full_pass_cpu_s']} s"),
        ("quick pass (scanner thread CPU)", "", lambda r: "-" if r['projection_at_defaults']['quick_pass_cpu_s']
         is None else f"{r['projection_at_defaults']['quick_pass_cpu_s']} s"),
        ("idle CPU, quiet", "", lambda r: f"{r['quiet']['cpu_pct_of_core']}%"),
        ("idle CPU, amortised over the window (rescans compressed: see passes)", "",
         lambda r: f"{r['amortised']['cpu_pct_of_core']}% ({_passes(r['amortised']['scans_inside'])} in "
                   f"{r['amortised']['window_s']:g} s)"),
        ("idle CPU, amortised at the defaults (5 min / 6 h)", "< 1%",
         lambda r: f"{r['projection_at_defaults']['cpu_pct_of_core']}%"),
        ("RSS peak / steady", "< 200 MB", lambda r: f"{r['rss_peak_mb']} / {r['rss_steady_mb']} MB"),
        ("`s3-uploader status` (median of 3)", "< 1 s", lambda r: f"{r['status_wall_median_s']} s"),
        ("database size", "", lambda r: f"{r['db_bytes'] / 1e6:.0f} MB"),
    ]
    return head + "".join(f"| {name} | {target} | " + " | ".join(fn(report[k]) for k in runs) + " |\n"
                          for name, target, fn in rows)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--per-folder", type=int, default=250)
    ap.add_argument("--seed-with", choices=("db", "once"), default="db")
    ap.add_argument("--scan-interval", type=float, default=60.0)
    ap.add_argument("--full-scan-interval", type=float, default=240.0)
    ap.add_argument("--quiet-seconds", type=float, default=30.0)
    ap.add_argument("--window", type=float, default=300.0)
    ap.add_argument("--no-events", action="store_true", help="use_events = false (rescans only)")
    ap.add_argument("--old-src", help="another src folder: measured too, over the same tree and database")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--reuse", action="store_true", help="the tree and database in --work are there already")
    ap.add_argument("--keep", action="store_true", help="keep --work")
    ap.add_argument("--prepare-only", action="store_true", help="build and seed --work, measure nothing")
    return ap.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from s3_uploader.embedded import LocalS3, free_port
    work = args.work or Path(tempfile.mkdtemp(prefix="million-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root, db = work / "tree", work / "state.db"
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    report: Dict[str, Any] = {"files": args.files, "per_folder": args.per_folder, "seed_with": args.seed_with,
                              "at": dt.datetime.now(dt.timezone.utc).isoformat(), "commit": commit,
                              "old_src": args.old_src, "cpus": os.cpu_count(), "load_at_start": os.getloadavg()}
    # the same endpoint for every run over this database: a new one is a new destination, and the
    # daemon would (rightly) upload every file again
    port_file = work / "s3.port"
    port = int(port_file.read_text()) if args.reuse and port_file.exists() else free_port()
    port_file.write_text(str(port))
    try:
        with LocalS3(work / "s3", port=port) as server:
            server.create_bucket(BUCKET)
            env = {**os.environ, **server.env()}
            env.pop("AWS_PROFILE", None)
            if not args.reuse:
                shutil.rmtree(root, ignore_errors=True)
                for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                    p.unlink(missing_ok=True)
                t = time.perf_counter()
                report["folders"] = build(root, args.files, args.per_folder)
                report["build_s"] = round(time.perf_counter() - t, 1)
                print(f"built {args.files:,} files in {report['folders']:,} folders in {report['build_s']}s",
                      flush=True)
            if not db.exists():
                cfg = write_config(work / "seed.ini", root, db, server.endpoint, free_port(), 300, None)
                t = time.perf_counter()
                if args.seed_with == "db":
                    report["rows"] = seed(db, root, cfg)
                else:
                    subprocess.run([sys.executable, "-m", "s3_uploader", "once", "-c", str(cfg)], env=env,
                                   check=True, stdout=subprocess.DEVNULL)
                report["seed_s"] = round(time.perf_counter() - t, 1)
                print(f"seeded ({args.seed_with}) in {report['seed_s']}s", flush=True)
            if args.prepare_only:
                return 0
            t = time.perf_counter()
            for dirpath, _dirs, names in os.walk(root):  # the same warm caches for every run
                for name in names:
                    os.lstat(os.path.join(dirpath, name))
            report["warm_s"] = round(time.perf_counter() - t, 1)
            runs = [("new", env, args.full_scan_interval)]
            if args.old_src:
                runs.append(("old", {**env, "PYTHONPATH": str(Path(args.old_src).resolve())}, None))
            for name, run_env, full in runs:
                cfg = write_config(work / f"{name}.ini", root, db, server.endpoint, free_port(),
                                   args.scan_interval, full, events=not args.no_events)
                report[name] = measure(sys.executable, cfg, run_env, work / f"{name}-run.log", args)
                report[name]["db_bytes"] = db_bytes(db)
                print(f"{name}: {json.dumps(report[name])}", flush=True)
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = HERE / "results" / f"million-{stamp}.json"
    report["load_at_end"] = os.getloadavg()
    report["table"] = markdown(report)
    out.write_text(json.dumps(report, indent=2))
    print(report["table"])
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

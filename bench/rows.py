"""Months of rows: what a state database of a million rows costs (issue 12, item 5).

    .venv/bin/python bench/rows.py                          # build, measure, print, save JSON
    .venv/bin/python bench/rows.py --rows 200000 --idle-seconds 30
    git archive 283419e src | tar -x -C /tmp/old                   # the code before schema 3
    .venv/bin/python bench/rows.py --old-src /tmp/old/src         # ... and its idle CPU too

Builds a database of ``--rows`` rows as months of camera footage leave it (90% deleted by cleanup,
9.9% uploaded, 0.1% waiting; paths and keys like a camera's: ``cam3/2026-10-14/09/cam3.20261014_093012_17.mp4``),
filled with ``executemany`` by whichever ``s3_uploader`` the running Python imports (so
``--old-src`` builds the old schema for the old code). Then measures, on this code:

- the database's size on disk (after a checkpoint: the WAL folded in);
- ``s3-uploader status`` wall time (a subprocess, median of ``--status-runs``);
- ``Store.counts()`` and ``Store.oldest_waiting()``, against the queries they ran before schema 3
  (a GROUP BY over every row; an ORDER BY over the waiting rows found through ``files_state``);
- the forget pass: rows deleted over 15 days ago forgotten from a copy, rows/s and the longest
  batch (how long the store's lock is held at most);
- the idle CPU of ``s3-uploader run`` over a folder of a handful of uploaded files with that
  database and ``metrics_address`` set (so the state snapshot is read every 10 s, as under systemd),
  from ``/proc/PID/stat`` over ``--idle-seconds`` once start-up has settled; with ``--old-src``
  (a ``src`` folder put first on PYTHONPATH) the same for the old code, on its own database of the
  same rows.

One SeaweedFS server (``s3_uploader.embedded.LocalS3``: 127.0.0.1, free ports, stopped by PID)
serves the idle runs. Results print and go to ``bench/results/rows-<UTC time>.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import proc_cpu  # noqa: E402  (the harness's own reading of /proc/PID/stat)

HERE = Path(__file__).resolve().parent
DAY = 86400.0
BATCH = 50_000


def fill(db: Path, rows: int, seed: int, now: float) -> None:
    """Create ``db`` with the importable s3_uploader's schema, then ``rows`` rows in one transaction.
    Deleted rows were deleted over the last 29 days (none is due to be forgotten at 30 days)."""
    from s3_uploader.store import Store
    Store(db).close()
    rng = random.Random(seed)
    conn = sqlite3.connect(str(db))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN")
    sql = ("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, md5, etag, attempts, discovered_at, "
           "updated_at, uploaded_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)")
    batch: List[tuple] = []
    span = 29 * DAY
    for i in range(rows):
        age = span * (1 - i / rows)  # oldest first, as they were found
        t = now - age
        stamp = time.gmtime(t)
        cam = i % 8
        ext = "mp4" if i % 4 == 0 else "jpg"
        rel = (f"cam{cam}/{time.strftime('%Y-%m-%d', stamp)}/{stamp.tm_hour:02d}/"
               f"cam{cam}.{time.strftime('%Y%m%d_%H%M%S', stamp)}_{i % 100:02d}.{ext}")
        r = rng.random()
        state = "pending" if r < 0.001 else "uploaded" if r < 0.1 else "deleted"
        md5 = None if state == "pending" else "%032x" % rng.getrandbits(128)
        raw = rel.encode()
        batch.append((raw, raw.rpartition(b"/")[0], "nvr-1/" + rel, state, rng.randrange(10**5, 10**8),
                      int(t * 1e9), 100_000 + i, md5, md5, t, t + 60 if state == "deleted" else t,
                      None if state == "pending" else t + 5))
        if len(batch) == BATCH:
            conn.executemany(sql, batch)
            batch = []
    conn.executemany(sql, batch)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


def timed(fn: Any, runs: int = 5) -> float:
    """Median wall seconds of ``runs`` calls of ``fn``."""
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def config(path: Path, inbox: Path, db: Path, server: Any, bucket: str, port: int) -> Path:
    path.write_text(f"[watch]\ndirectory_to_watch = {inbox}\n[s3]\nbucket = {bucket}\nendpoint_url = "
                    f"{server.endpoint}\n[daemon]\ndb_path = {db}\nmetrics_address = 127.0.0.1:{port}\n")
    return path


def idle(python: str, cfg: Path, env: Dict[str, str], seconds: float, log_path: Path) -> Dict[str, Any]:
    """Start ``python -m s3_uploader run``; once it has uploaded the inbox and gone quiet, its CPU."""
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen([python, "-m", "s3_uploader", "run", "-c", str(cfg)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while "Successfully uploaded" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not upload its inbox; see {log_path}")
            time.sleep(0.2)
        started = time.perf_counter() - t0
        # settled: two consecutive seconds under 30 ms of CPU each
        quiet, last = 0, proc_cpu(proc.pid)
        while quiet < 2:
            time.sleep(1.0)
            now = proc_cpu(proc.pid)
            quiet = quiet + 1 if now - last < 0.03 else 0
            last = now
        c0, t1 = proc_cpu(proc.pid), time.perf_counter()
        time.sleep(seconds)
        c1, t2 = proc_cpu(proc.pid), time.perf_counter()
        return {"ready_after_s": round(started, 2), "window_s": round(t2 - t1, 1), "cpu_s": round(c1 - c0, 3),
                "cpu_pct_of_core": round(100 * (c1 - c0) / (t2 - t1), 3)}
    finally:
        proc.terminate()
        proc.wait(60)


def measure_queries(db: Path) -> Dict[str, Any]:
    from s3_uploader.store import _COLUMNS, Store, WAITING_STATES
    out: Dict[str, Any] = {}
    with Store(db, readonly=True) as st:
        marks = ",".join("?" * len(WAITING_STATES))
        out["counts_ms"] = round(1000 * timed(st.counts, 9), 3)
        out["counts_group_by_ms"] = round(1000 * timed(
            lambda: st.db.read("SELECT state, count(*) FROM files GROUP BY state"), 5), 1)
        out["oldest_waiting_ms"] = round(1000 * timed(st.oldest_waiting, 9), 3)
        out["oldest_waiting_before_ms"] = round(1000 * timed(lambda: st.db.read(
            f"SELECT {_COLUMNS} FROM files WHERE state IN ({marks}) ORDER BY discovered_at LIMIT 1",
            WAITING_STATES), 9), 3)
        out["counts"] = st.counts()
        from s3_uploader.cli import status_data
        out["status_data_ms"] = round(1000 * timed(lambda: status_data(st), 9), 3)
    return out


def measure_forget(db: Path, work: Path, now: float) -> Dict[str, Any]:
    """Forget the rows deleted over 15 days ago, from a copy: rows, seconds, longest batch."""
    from s3_uploader.store import Store
    copy = work / "forget.db"
    shutil.copy(db, copy)
    batches: List[float] = []
    total = 0
    with Store(copy) as st:
        before = st.counts()["deleted"]
        t0 = time.perf_counter()
        while True:
            t = time.perf_counter()
            n = st.forget_done(now - 15 * DAY)
            batches.append(time.perf_counter() - t)
            total += n
            if n < 5000:
                break
        secs = time.perf_counter() - t0
        after = st.counts()["deleted"]
    out = {"rows_forgotten": total, "deleted_before": before, "deleted_after": after, "seconds": round(secs, 2),
           "rows_per_s": round(total / secs), "longest_batch_ms": round(1000 * max(batches), 1),
           "bytes_before": db_bytes(db), "bytes_after_vacuum": None}
    conn = sqlite3.connect(str(copy))
    conn.execute("VACUUM")
    conn.close()
    out["bytes_after_vacuum"] = db_bytes(copy)
    copy.unlink()
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--status-runs", type=int, default=5)
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--old-src", help="a src folder holding the code before schema 3: its idle too")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--fill-only", type=Path, help=argparse.SUPPRESS)  # used through --old-src
    ap.add_argument("--now", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    now = args.now or time.time()
    if args.fill_only:
        fill(args.fill_only, args.rows, args.seed, now)
        return 0
    from s3_uploader.embedded import LocalS3
    work = args.work or Path(tempfile.mkdtemp(prefix="rows-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    report: Dict[str, Any] = {"rows": args.rows, "at": dt.datetime.now(dt.timezone.utc).isoformat(),
                              "commit": commit, "old_src": args.old_src}
    db = work / "new.db"
    t = time.perf_counter()
    fill(db, args.rows, args.seed, now)
    report["fill_s"] = round(time.perf_counter() - t, 1)
    report["db_bytes"] = db_bytes(db)
    print(f"filled {args.rows:,} rows in {report['fill_s']}s: {report['db_bytes'] / 1e6:.1f} MB", flush=True)
    report.update(measure_queries(db))
    print(json.dumps({k: v for k, v in report.items() if k.endswith("_ms")}), flush=True)
    inbox = work / "inbox"
    inbox.mkdir(exist_ok=True)
    for i in range(5):
        (inbox / f"clip-{i}.mp4").write_bytes(os.urandom(1000))
    cfg = config(work / "config.ini", inbox, db, type("S", (), {"endpoint": "http://127.0.0.1:1"})(), "x", 1)
    status_runs = []
    for _ in range(args.status_runs):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "s3_uploader", "status", "-c", str(cfg)], capture_output=True,
                           text=True)
        status_runs.append(time.perf_counter() - t)
        if r.returncode:
            raise RuntimeError(r.stderr)
    report["status_wall_s"] = [round(x, 3) for x in status_runs]
    report["status_wall_median_s"] = round(statistics.median(status_runs), 3)
    print(f"status: median {report['status_wall_median_s']}s of {report['status_wall_s']}", flush=True)
    report["forget"] = measure_forget(db, work, now)
    print(f"forget: {json.dumps(report['forget'])}", flush=True)
    from s3_uploader.embedded import free_port
    with LocalS3(work / "s3") as server:
        server.create_bucket("rows")
        env = {**os.environ, **server.env(), "AWS_EC2_METADATA_DISABLED": "true"}
        env.pop("AWS_PROFILE", None)
        runs = [("new", env, db)]
        if args.old_src:
            old_db = work / "old.db"
            old_env = {**env, "PYTHONPATH": str(Path(args.old_src).resolve())}
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--fill-only", str(old_db), "--rows",
                            str(args.rows), "--seed", str(args.seed), "--now", repr(now)], check=True,
                           cwd=str(work), env=old_env)
            runs.append(("old", old_env, old_db))
        for name, run_env, path in runs:
            c = config(work / f"{name}.ini", inbox, path, server, "rows", free_port())
            report[f"idle_{name}"] = idle(sys.executable, c, run_env, args.idle_seconds, work / f"{name}-run.log")
            report[f"idle_{name}"]["db_bytes"] = db_bytes(path)
            print(f"idle ({name}): {json.dumps(report[f'idle_{name}'])}", flush=True)
    out = HERE / "results" / f"rows-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

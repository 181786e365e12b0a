"""The fixed cost of ``s3-uploader once`` on an empty folder: wall time, and connections and bytes
through the relay (so round trips can be counted), old code against new in one run.

    .venv/bin/python bench/startup.py --rtt 40ms --reps 5 --baseline /tmp/base/src

Starts one SeaweedFS (``LocalS3``) and, with ``--rtt``, one ``bench/relay.py`` per run in front of
it. Each rep runs every variant once, alternating (new, old, new, old...), so a busy box slows both
alike; the medians are printed and, with ``--out``, written as JSON. ``--baseline`` is a ``src``
folder of another checkout (e.g. ``git archive 4964e86 src | tar -x -C /tmp/base``), put first on
PYTHONPATH for the "old" variant.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regimes import RelayProcess  # noqa: E402
from relay import parse_duration  # noqa: E402

from s3_uploader.embedded import LocalS3  # noqa: E402


def one_run(src: Optional[str], endpoint: str, env: Dict[str, str], work: Path, tag: str) -> float:
    d = work / tag
    (d / "watch").mkdir(parents=True, exist_ok=True)
    cfg = d / "config.ini"
    cfg.write_text(f"[watch]\ndirectory_to_watch = {d / 'watch'}\n[s3]\nbucket = bench\nendpoint_url = {endpoint}\n"
                   f"prefix = {tag}\n[daemon]\ndb_path = {d / 'state.db'}\n")
    e = dict(os.environ, **env)
    if src:
        e["PYTHONPATH"] = src
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "s3_uploader", "once", "-c", str(cfg)], env=e,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{tag}: exit {p.returncode}\n{p.stdout}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt", default="", help="round-trip time through bench/relay.py (default: direct)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--baseline", default="", help="the old code's src folder")
    ap.add_argument("--fresh-db", action="store_true", help="a new state database every run (first start)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    variants = {"new": str(Path(__file__).resolve().parent.parent / "src")}
    if a.baseline:
        variants["old"] = a.baseline
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        work = Path(tmp)
        server = LocalS3(work / "server").start()
        try:
            server.create_bucket("bench")
            times: Dict[str, List[float]] = {v: [] for v in variants}
            conns: Dict[str, List[Any]] = {v: [] for v in variants}
            for rep in range(a.reps):
                for name, src in variants.items():
                    tag = f"{name}-{rep}" if a.fresh_db else name
                    relay = None
                    endpoint = server.endpoint
                    if a.rtt:
                        relay = RelayProcess(server.port, work / f"relay-{name}-{rep}.log",
                                             parse_duration(a.rtt), 0.0, 0)
                        endpoint = relay.endpoint
                    try:
                        times[name].append(one_run(src, endpoint, server.env(), work, tag))
                    finally:
                        if relay is not None:
                            conns[name].append(relay.stop())
            out = {"rtt": a.rtt or "direct", "reps": a.reps, "fresh_db": a.fresh_db,
                   "median_s": {v: round(statistics.median(t), 3) for v, t in times.items()},
                   "times_s": {v: [round(x, 3) for x in t] for v, t in times.items()}, "relay": conns}
            if "old" in times:
                out["new_over_old"] = round(out["median_s"]["new"] / out["median_s"]["old"], 3)
            print(json.dumps(out, indent=1))
            if a.out:
                Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
        finally:
            server.stop()


if __name__ == "__main__":
    main()

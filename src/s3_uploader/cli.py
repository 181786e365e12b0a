"""The ``s3-uploader`` command: run, once, check, status, retry, ls, demo, example-config.

Exit codes: 0 success; 1 the work failed (a file not uploaded, the bucket unreachable, the
directory missing); 2 a usage or configuration error, always with a message naming the problem.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol

from . import __version__, logs
from .budget import human_bytes
from .cleanup import cleanup_lines
from .config import Config, ConfigError, load_config, render_example
from .runmode import RunMode
from .status import status_data
from .store import STATES, Store, StoreError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("s3_uploader.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s3-uploader",
        description="Upload files from a watched directory to S3 (or any S3-compatible store), exactly once, "
                    "and delete local copies only once S3 proves it has them.",
        epilog="Exit codes: 0 ok, 1 the work failed, 2 usage or configuration error.")
    p.add_argument("--version", action="version", version=f"s3-uploader {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text)
        c.add_argument("-c", "--config", default="config.ini", metavar="PATH",
                       help="configuration file (default: ./config.ini)")
        return c

    cmd("run", "Run the daemon in the foreground until SIGTERM/SIGINT (SIGHUP reloads the config).")
    cmd("once", "Upload the tree as it is now (waiting for changing files to settle), run one cleanup pass if "
                "configured, then exit: 0 when every file found is in S3, 1 when any failed.")
    cmd("check", "Validate the config, the directory, the writer check, the state database and bucket access; one "
                 "line each.")
    st = cmd("status", "Show what the state database holds: files per state, the oldest waiting, last errors.")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    cmd("retry", "Make every parked or failed file due for another attempt now (a running daemon picks them up).")
    ls = cmd("ls", "List the objects under the configured prefix, with their Content-Type (one HEAD per object).")
    ls.add_argument("prefix", nargs="?", default=None, help="list under this key prefix instead")
    ls.add_argument("-l", "--long", action="store_true", help="also show each object's metadata, tags, Object "
                                                              "Lock and stored checksum")
    ls.add_argument("--json", action="store_true", help="one JSON object per line (with --long's details)")
    demo = sub.add_parser("demo", help="Start a local S3-compatible server, a bucket and an inbox folder, and run "
                                       "the daemon on them (no AWS account needed).",
                          description="Start a local S3-compatible server on 127.0.0.1, a bucket and an inbox folder, "
                                      "and run the daemon on them until Ctrl-C.")
    demo.add_argument("--dir", default="demo", help="where the demo keeps its server data, inbox and config "
                                                    "(default: ./demo)")
    demo.add_argument("--server", choices=("seaweedfs", "rclone"), default="seaweedfs",
                      help="which local S3-compatible server to run (default: seaweedfs)")
    demo.add_argument("--port", type=int, default=8333, help="S3 port on 127.0.0.1 (default 8333; a free one if taken)")
    sub.add_parser("example-config", help="Print a config.example.ini documenting every key.")
    return p


_early_signals: List[int] = []


def _remember_signal(signum: int, _frame: Any) -> None:
    _early_signals.append(signum)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("run", "once", "demo") and threading.current_thread() is threading.main_thread():
        # a stop request that arrives while we are still loading is kept, not fatal (install_signals replays it)
        signal.signal(signal.SIGTERM, _remember_signal)
        signal.signal(signal.SIGINT, _remember_signal)
    try:
        if args.command == "example-config":
            sys.stdout.write(render_example())
            return EXIT_OK
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(lambda cfg: cmd_run(cfg, None), Path(args.dir), args.server, args.port)
        cfg = _load(args.config)
        if cfg is None:
            return EXIT_USAGE
        return COMMANDS[args.command](cfg, args)
    except KeyboardInterrupt:
        return 130


def _load(path: str) -> Optional[Config]:
    try:
        return load_config(path)
    except ConfigError as exc:
        n = len(exc.errors)
        print(f"s3-uploader: configuration error{'s' if n > 1 else ''} ({n}):", file=sys.stderr)
        for e in exc.errors:
            print(f"  {e}", file=sys.stderr)
        return None


def _setup_logs(cfg: Config) -> None:
    d = cfg.daemon
    if d.log_file:
        Path(d.log_file).parent.mkdir(parents=True, exist_ok=True)
    logs.setup(d.log_level, d.log_format, d.log_file, d.log_max_bytes, d.log_backup_count)


def cmd_run(cfg: Config, args: Any, mode: RunMode = RunMode.SERVICE) -> int:
    from .daemon import Daemon
    from .preflight import StartupError
    try:
        _setup_logs(cfg)
    except OSError as exc:
        print(f"s3-uploader: cannot open log file {cfg.daemon.log_file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL
    daemon = Daemon(cfg, mode=mode)
    install_signals(daemon)
    try:
        return daemon.run()
    except StartupError as exc:
        log.error("%s", exc)
        return EXIT_FAIL


class Signalled(Protocol):
    """What the signal handlers tell a daemon: both only set a flag its main loop acts on."""

    def signal_stop(self, signum: int) -> None: ...

    def request_reload(self) -> None: ...


def install_signals(daemon: Signalled) -> None:
    """SIGTERM/SIGINT: stop (a second one skips the drain). SIGHUP: reload, where the daemon can.

    The handlers only set flags (``daemon.signal_stop`` appends to a list, ``request_reload`` sets a
    boolean): a handler runs on the main thread between two bytecodes, possibly while that thread
    holds a lock (an Event's, logging's) that anything more would take again and deadlock on. The
    main thread's loop acts on them, and logs them."""
    def on_stop(signum: int, _frame: Any) -> None:
        daemon.signal_stop(signum)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    while _early_signals:
        on_stop(_early_signals.pop(0), None)


def cmd_once(cfg: Config, args: Any) -> int:
    return cmd_run(cfg, args, RunMode.ONCE)


def cmd_check(cfg: Config, args: Any) -> int:
    from .preflight import check
    ok, refused = check(cfg, print)
    return EXIT_USAGE if refused else EXIT_OK if ok else EXIT_FAIL


def _age(seconds: float) -> str:
    s = int(seconds)
    d, h, m, sec = s // 86400, s % 86400 // 3600, s % 3600 // 60, s % 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {sec}s" if m else f"{sec}s"


def budget_lines(b: Optional[Dict[str, Any]]) -> List[str]:
    """What ``status`` says of the data budgets (nothing when none is set)."""
    if not b:
        return []
    lines = []
    for name, where in (("day", "today"), ("month", "this month")):
        p = b.get(name)
        if p:
            lines.append(f"Upload budget {where} ({p['period']}): {human_bytes(p['used'])} of "
                         f"{human_bytes(p['limit'])} used, {human_bytes(p['left'])} left "
                         f"([upload] max_bytes_per_{name})")
    if b["paused"]:
        lines.append(f"Uploads PAUSED by the budget: {b['waiting']:,} file(s) wait; uploads resume at "
                     f"{b['resume_at_local']}")
    return lines


def cmd_status(cfg: Config, args: Any) -> int:
    try:
        with Store(cfg.daemon.db_path, readonly=True) as store:
            data = status_data(store)
    except StoreError as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "counts": {s: 0 for s in STATES}}))
        else:
            print(str(exc), file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=False))
        return EXIT_OK
    print(f"State database: {data['db_path']}")
    if data["destination"]:
        print(f"Destination: {data['destination']}")
    width = max(len(s) for s in STATES)
    for state in STATES:
        print(f"  {state:<{width}}  {data['counts'][state]:>9,}")
    print(f"  {'total':<{width}}  {data['total']:>9,}")
    o = data["oldest_waiting"]
    if o:
        extra = f", {o['attempts']} failed attempt(s), last error: {o['last_error']}" if o["last_error"] else ""
        print(f"Oldest file not yet in S3: {o['path']} ({o['state']}, waiting {_age(o['age_seconds'])}{extra})")
    else:
        print("Every file found is in S3.")
    if data["parked"]:
        print("Parked (tried again after parked_retry_interval, or now with 's3-uploader retry'):")
        for p in data["parked"]:
            print(f"  {p['path']}: {p['kind']}: {p['error']}")
    if data["outage"]:
        o = data["outage"]
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(o["since"])) if o.get("since") else "?"
        print(f"S3 endpoint {o['endpoint']}: NOT ANSWERING since {since} ({o.get('failures', 0)} failed "
              f"attempt(s); last: {o.get('error', '')})")
    for line in budget_lines(data["budget"]):
        print(line)
    for line in cleanup_lines(data["cleanup"]):
        print(line)
    h = data["hooks"]
    hk = cfg.hooks
    if hk.on_uploaded or hk.on_parked or hk.on_deleted or hk.webhook_url or h["pending"] or h["delivered"] \
            or h["given_up"]:
        print(f"Hooks: {h['pending']:,} pending, {h['delivered']:,} delivered, {h['given_up']:,} given up"
              + (f"; last error: {h['last_error']}" if h["last_error"] else ""))
    if data["last_errors"]:
        print("Last errors:")
        for e in data["last_errors"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
            print(f"  {when} [{e['kind']}] {e['path'] or ''}: {e['message']}")
    return EXIT_OK


def cmd_retry(cfg: Config, args: Any) -> int:
    try:
        with Store(cfg.daemon.db_path) as store:
            n = store.retry_parked()
    except StoreError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAIL
    print(f"{n} parked or failed file(s) are due for another attempt now "
          f"(a running daemon picks them up within a second; or run: s3-uploader once)")
    return EXIT_OK


def cmd_ls(cfg: Config, args: Any) -> int:
    from .keys import KeyMaker
    from .objects import describe_objects
    from .remote import remote_from_config
    remote = remote_from_config(cfg)
    prefix = args.prefix if args.prefix is not None else KeyMaker(cfg.s3.prefix).static_prefix
    long = args.long or args.json
    n = total = 0
    try:
        for o in describe_objects(remote.client, cfg.s3.bucket, prefix, long=long):
            if args.json:
                print(json.dumps(dict(o, last_modified=o["last_modified"].isoformat() if o["last_modified"] else None)))
            else:
                print(f"{o['last_modified']:%Y-%m-%d %H:%M:%S}  {o['size']:>12,}  {o['content_type'] or '-':<24}  "
                      f"{o['key']}")
                if long:
                    for line in _ls_details(o):
                        print(f"    {line}")
            n += 1
            total += o["size"]
    except Exception as exc:
        print(f"Cannot list s3://{cfg.s3.bucket}/{prefix}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        remote.close()
    if not args.json:
        print(f"{n} object(s), {total:,} bytes under s3://{cfg.s3.bucket}/{prefix}")
    return EXIT_OK


def _ls_details(o: Dict[str, Any]) -> List[str]:
    """``ls --long``'s lines under one object: metadata, tags, lock, checksum."""
    def pairs(d: Optional[Dict[str, str]]) -> str:
        return "(unknown)" if d is None else ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "(none)"
    lines = [f"metadata: {pairs(o['metadata'])}", f"tags: {pairs(o['tags'])}"]
    lock = o["lock"]
    if lock["mode"] or lock["legal_hold"]:
        lines.append(f"lock: {lock['mode'] or '-'} until {lock['retain_until'] or '-'}"
                     f"{', legal hold' if lock['legal_hold'] else ''}")
    if o["checksum"]:
        lines.append(f"checksum: {pairs(o['checksum'])}")
    return lines


COMMANDS = {"run": cmd_run, "once": cmd_once, "check": cmd_check, "status": cmd_status, "retry": cmd_retry,
            "ls": cmd_ls}

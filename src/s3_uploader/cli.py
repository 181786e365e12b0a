"""The ``s3-uploader`` command: run, once, check, status, retry, ls, demo, example-config.

Exit codes: 0 success; 1 the work failed (a file not uploaded, the bucket unreachable, the
directory missing); 2 a usage or configuration error, always with a message naming the problem.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import __version__, logs
from .cleanup import cleanup_lines, cleanup_status
from .outage import META_OUTAGE
from .outage import stored as outage_stored
from .config import Config, ConfigError, load_config, render_example
from .store import STATES, WAITING_STATES, Store, StoreError, display

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
    ls = cmd("ls", "List the objects under the configured prefix.")
    ls.add_argument("prefix", nargs="?", default=None, help="list under this key prefix instead")
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


def cmd_run(cfg: Config, args: Any, once: bool = False) -> int:
    from .daemon import Daemon, StartupError
    try:
        _setup_logs(cfg)
    except OSError as exc:
        print(f"s3-uploader: cannot open log file {cfg.daemon.log_file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL
    daemon = Daemon(cfg, once=once)
    install_signals(daemon)
    try:
        return daemon.run()
    except StartupError as exc:
        log.error("%s", exc)
        return EXIT_FAIL


def install_signals(daemon: Any) -> None:
    """SIGTERM/SIGINT: stop (a second one skips the drain). SIGHUP: reload, where the daemon can.

    The handlers only set flags (``daemon.signal_stop`` appends to a list, ``request_reload`` sets a
    boolean): a handler runs on the main thread between two bytecodes, possibly while that thread
    holds a lock (an Event's, logging's) that anything more would take again and deadlock on. The
    main thread's loop acts on them, and logs them."""
    def on_stop(signum: int, _frame: Any) -> None:
        daemon.signal_stop(signum)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if hasattr(signal, "SIGHUP") and hasattr(daemon, "request_reload"):
        signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    while _early_signals:
        on_stop(_early_signals.pop(0), None)


def cmd_once(cfg: Config, args: Any) -> int:
    return cmd_run(cfg, args, once=True)


def cmd_check(cfg: Config, args: Any) -> int:
    from .remote import TLS_CODE, RemoteError, remote_from_config
    ok = True
    print(f"Config OK: {cfg.source}")
    root = cfg.watch_root
    if not root.is_dir():
        print(f"Watch directory does not exist: {root}" if not root.exists()
              else f"Watch directory is not a directory: {root}")
        ok = False
    elif not os.access(root, os.R_OK | os.X_OK):
        print(f"Watch directory cannot be read (permission denied): {root}")
        ok = False
    else:
        print(f"Watch directory OK: {root}")
        if cfg.watch.use_events:
            print(events_line(str(root)))
    if root.is_dir():
        from .writers import WriterProbe
        probe = WriterProbe(str(root))
        # a warning, not a failure: size and mtime stability still decide for what it cannot see
        print(probe.blind_spot() or f"Writer check OK: {probe.method()}")
    db = Path(cfg.daemon.db_path)
    folder = db.parent if not db.exists() else db
    if os.access(folder if folder.exists() else folder.parent, os.W_OK):
        print(f"State database OK: {db}")
    else:
        print(f"State database cannot be written: {db}")
        ok = False
    try:
        remote = remote_from_config(cfg)
        remote.check_access()
        where = cfg.s3.endpoint_url or "AWS"
        print(f"S3 bucket OK: s3://{cfg.s3.bucket}/{cfg.s3.prefix} ({where})")
        remote.close()
    except RemoteError as exc:
        print(exc.reason if exc.code == TLS_CODE else
              f"S3 bucket {cfg.s3.bucket} does not exist or you don't have access ({exc.reason})")
        ok = False
    except Exception as exc:  # e.g. a profile that does not exist
        print(f"S3 bucket {cfg.s3.bucket} cannot be checked ({' '.join(str(exc).split())})")
        ok = False
    line = _destination_change(cfg, db)
    if line:
        print(line)
    return EXIT_OK if ok else EXIT_FAIL


def events_line(root: str) -> str:
    """``check``'s line on filesystem events: the folders to watch against the inotify limit."""
    from .watcher import watch_limit
    folders = sum(1 for _ in os.walk(root))
    limit = watch_limit()
    if limit is None:
        return f"Filesystem events: {folders:,} folder(s) to watch"
    if folders > limit:
        return (f"Filesystem events: WARNING: {folders:,} folders to watch, over the inotify limit of {limit:,} "
                f"per user (fs.inotify.max_user_watches): the rest are seen only by rescans; raise it: "
                f"sysctl -w fs.inotify.max_user_watches={max(2 * limit, 4 * folders)}")
    return (f"Filesystem events: {folders:,} folder(s) to watch, inotify allows {limit:,} watches per user "
            f"(fs.inotify.max_user_watches; other programs of the same user share it)")


def _destination_change(cfg: Config, db: Path) -> Optional[str]:
    """What the next start will do about a destination that differs from the one the database
    records (None when it is the same, or nothing is recorded). Opens the database read-only."""
    from .destination import Destination, recorded_destination
    if not db.exists():
        return None
    try:
        with Store(db, readonly=True) as store:
            text = recorded_destination(store)
    except StoreError:
        return None  # the daemon's own start-up says what is wrong with it
    if text is None:
        return None
    old = Destination.from_json(text)
    if old == Destination.from_config(cfg):
        return None
    was = old.describe() if old is not None else "an unreadable record"
    return f"Destination changed since the last run (was {was}): the next start uploads every file still present again"


def status_data(store: Store, now: Optional[float] = None) -> Dict[str, Any]:
    """Everything ``status`` shows, as plain data (the JSON form)."""
    now = time.time() if now is None else now
    counts = store.counts()
    oldest = store.oldest_waiting()
    from .destination import Destination, recorded_destination
    text = recorded_destination(store)
    dest = Destination.from_json(text) if text is not None else None
    out: Dict[str, Any] = {
        "db_path": str(store.path),
        "destination": dest.describe() if dest is not None else None,
        "counts": counts,
        "total": sum(counts.values()),
        "waiting": sum(counts[s] for s in WAITING_STATES),
        "oldest_waiting": None if oldest is None else {
            "path": display(oldest.rel), "key": oldest.key, "state": oldest.state,
            "age_seconds": round(max(0.0, now - oldest.discovered_at), 3),
            "attempts": oldest.attempts, "last_error": oldest.last_error},
        "last_errors": [{"at": at, "path": display(p) if p else None, "kind": kind, "message": msg}
                        for at, p, kind, msg in store.last_errors(10)],
        "parked": [{"path": display(r.rel), "kind": r.error_kind, "error": r.last_error, "attempts": r.attempts}
                   for r in store.in_states(("parked",), limit=20)],
        "cleanup": cleanup_status(store),
        "outage": outage_stored(store.meta(META_OUTAGE)),
        "hooks": hooks_summary(store),
    }
    return out


def hooks_summary(store: Store) -> Dict[str, Any]:
    """``status``'s "hooks" object: pending, delivered, given_up, last_error (see events.summary)."""
    from .events import summary
    with store.connection() as conn:
        return summary(conn)


def _age(seconds: float) -> str:
    s = int(seconds)
    d, h, m, sec = s // 86400, s % 86400 // 3600, s % 3600 // 60, s % 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {sec}s" if m else f"{sec}s"


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
    from .remote import remote_from_config
    remote = remote_from_config(cfg)
    prefix = args.prefix if args.prefix is not None else KeyMaker(cfg.s3.prefix).static_prefix
    n = total = 0
    try:
        for page in remote.client.get_paginator("list_objects_v2").paginate(Bucket=cfg.s3.bucket, Prefix=prefix):
            for o in page.get("Contents", ()):
                print(f"{o['LastModified']:%Y-%m-%d %H:%M:%S}  {o['Size']:>12,}  {o['Key']}")
                n += 1
                total += o["Size"]
    except Exception as exc:
        print(f"Cannot list s3://{cfg.s3.bucket}/{prefix}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        remote.close()
    print(f"{n} object(s), {total:,} bytes under s3://{cfg.s3.bucket}/{prefix}")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "once": cmd_once, "check": cmd_check, "status": cmd_status, "retry": cmd_retry,
            "ls": cmd_ls}

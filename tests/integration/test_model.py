"""A model-based test of the state machine and the scheduler: random histories, invariants after each.

hypothesis's stateful testing drives a real :class:`~s3_uploader.daemon.Daemon`, in-process, over a
real temporary tree and a :class:`~s3_uploader.remote.MemoryRemote` whose fault switch makes writes
and listings fail (throttled, 5xx, permanent), for one key or for all. The rules:

- **file events**: create, append, rewrite in place, truncate, delete, rename, make unreadable (and
  readable again), a path whose key is over S3's 1,024 bytes, a FIFO;
- **outcomes**: the remote's fault for a key or for everything (or none), an object the bucket
  loses (cleanup must then upload the file again, never delete it), and a crash: a running
  daemon's database loses every write not yet committed and refuses every later one, as after
  ``kill -9`` (the tree and the remote keep everything done up to then), then the next run starts
  on that database;
- **commands**: ``retry`` (``Store.retry_parked``), a reload of the config while running (include /
  exclude and cleanup changed, through the daemon's own reloader), a cleanup pass (by age, or by a
  free-space floor that every proven file is removed for).

The daemon runs in two ways. ``settle`` runs ``once`` to the end: the honest "eventually", since
``once`` returns only when every file found is uploaded or parked. ``run_for_a_while`` runs the
daemon with filesystem events, applies file events while it runs, and ends it with a clean stop or
a crash after a drawn number of uploads.

Invariants, checked after every run of the daemon (``check_rows`` also after every step):

- no thread died ("Thread X failed") and no internal error was logged: either is a bug;
- no row in an impossible state: a done row without its ETag and MD5 or upload time, a keyless
  row that is not parked for a collision, a failed/parked row without its error, a failed row
  without a next attempt, an uploading row after a clean stop, a row for a path outside the tree;
- every row recorded as uploaded, deleted or archived has its bytes in the remote under its key
  (deleted: the object is the file's only copy);
- nothing deleted without proof: a file the test wrote and did not delete is either in the tree
  with the bytes written, or its row is deleted and the remote holds exactly those bytes;
- after ``settle``: every regular file present is uploaded with its exact bytes (and the row has
  its signature), or parked with a reason that explains it (its key is too long; it cannot be read;
  the remote fails it); and with no fault in force, every readable file with a sendable key is in S3.

Unreadable files: the tests run as root, who reads anything, so the daemon's threads run without
``CAP_DAC_OVERRIDE`` and ``CAP_DAC_READ_SEARCH`` (dropped from the effective set of the thread that
starts it, which its threads inherit); the test thread keeps them.

CI runs 40 examples of up to 20 steps (about 10 s here); ``S3U_MODEL_EXAMPLES=500 S3U_MODEL_STEPS=30``
run longer (about 3 min).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import stat as stat_mod
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from helpers import cli, get_bytes, write_config

from s3_uploader.config import load_config
from s3_uploader.daemon import Daemon
from s3_uploader.runmode import RunMode
from s3_uploader.keys import escape_name, key_problem
from s3_uploader.remote import MemoryRemote
from s3_uploader.store import DONE_STATES, STATES, Store, StoreError
from s3_uploader.tree import is_quarantine_name

LONG = "/".join(["d" * 250] * 4) + "/" + "f" * 40 + ".txt"  # a key of 1,048 bytes
# "long" stands for LONG (so that a failing history stays readable)
PATHS = ["a.txt", "b.bin", "sub/c.txt", "sub/deeper/d.txt", "e%41.txt", "long"]
BIG = 5 * 1024 * 1024 + 1  # over multipart_threshold (5 MiB): two parts
FAULTS = [None, "throttled", "server", "permanent"]
CLEANUP = ["off", "age", "space"]
EXAMPLES = int(os.environ.get("S3U_MODEL_EXAMPLES", "40"))
STEPS = int(os.environ.get("S3U_MODEL_STEPS", "20"))


# -- running the daemon without root's power to read anything ---------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_DAC = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
_libc = ctypes.CDLL(None, use_errno=True)


def _set_dac(on: bool) -> bool:
    """Raise or drop the DAC capabilities in this thread's effective set; False when not possible."""
    if not hasattr(_libc, "capget"):
        return False
    hdr, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
    if _libc.capget(ctypes.byref(hdr), data) != 0:
        return False
    if on:
        data[0].effective |= data[0].permitted & _DAC
    else:
        data[0].effective &= ~_DAC
    return _libc.capset(ctypes.byref(hdr), data) == 0


class CrashableStore(Store):
    """A Store that can be crashed: what is not committed is lost, and every later write refused."""

    def crash(self) -> None:
        with self.db.lock:
            if self.db.conn.in_transaction:
                self.db.conn.execute("ROLLBACK")
            self.db.broken = StoreError(f"State database {self.path}: crashed by the test (kill -9)")


class Bugs(logging.Handler):
    """Collects the log lines that mean a bug: a dead thread, an internal error."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Thread ") or "Internal error" in msg or "internal error" in msg \
                or "Cleanup pass failed" in msg:
            self.lines.append(msg + (f" [{record.exc_info[1]!r}]" if record.exc_info else ""))


# -- the model ---------------------------------------------------------------------------------------

class Entry:
    """What the test put at a path: a regular file with these bytes (readable or not), or a FIFO."""

    def __init__(self, kind: str, data: bytes = b"", readable: bool = True):
        self.kind, self.data, self.readable = kind, data, readable


class UploaderModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="s3u-model-"))
        self.root = self.tmp / "in"
        self.root.mkdir()
        self.db = self.tmp / "state.db"
        self.remote = MemoryRemote("model")
        self.entries: Dict[str, Entry] = {}
        self.fault_all: Optional[str] = None
        self.fault_keys: Dict[str, str] = {}
        self.exclude_bin = False
        self.lost: Set[str] = set()  # keys whose object the test took out of the bucket
        self.cleanup = "off"
        self.crashed = False
        self.bugs = Bugs()
        logging.getLogger("s3_uploader").addHandler(self.bugs)
        self.can_drop = _set_dac(True)  # probe (a no-op when already raised)

    def teardown(self) -> None:
        try:
            # with every fault cleared and parked files retried, every sendable file must go
            self.remote.fail(None)
            self.fault_all, self.fault_keys = None, {}
            self.retry()
            self.settle()
        finally:
            logging.getLogger("s3_uploader").removeHandler(self.bugs)
            for dirpath, dirnames, filenames in os.walk(self.tmp):
                for n in filenames:
                    p = os.path.join(dirpath, n)
                    if not os.path.islink(p):
                        os.chmod(p, 0o644)
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / rel

    def config(self, run: bool) -> Path:
        cleanup: Dict[str, object] = {"cleanup_interval": "1s"}
        if self.cleanup == "age":
            cleanup["delete_after"] = "0.001s"
        elif self.cleanup == "space":
            cleanup["min_free_space"] = "99%"  # never met: every file proven in S3 is removed
        return write_config(self.tmp / "config.ini", {
            "watch": {"directory_to_watch": self.root, "stable_seconds": 0, "stable_checks": 1,
                      "scan_interval": "1s", "use_events": "true" if run else "false",
                      "exclude": "*.bin" if self.exclude_bin else ""},
            "s3": {"bucket": "model"},
            "upload": {"max_retries": 1, "retry_backoff_base": "0.01s", "retry_backoff_max": "0.02s",
                       "parked_retry_interval": "1h", "upload_workers": 2, "multipart_threshold": "5MiB",
                       "multipart_chunksize": "5MiB"},
            "cleanup": cleanup,
            "daemon": {"db_path": self.db, "shutdown_timeout": "5s"},
        })

    def fault_for(self, rel: str) -> Optional[str]:
        return self.fault_keys.get(escape_name(rel)) or self.fault_all

    def _start(self, run: bool) -> Tuple[Daemon, CrashableStore]:
        store = CrashableStore(self.db)
        return Daemon(load_config(self.config(run)), remote=self.remote, store=store, mode=RunMode.SERVICE if run else RunMode.ONCE), store

    def _run(self, d: Daemon) -> int:
        """``d.run()`` on this thread without the DAC capabilities (its threads inherit that)."""
        dropped = self.can_drop and _set_dac(False)
        try:
            return d.run()
        finally:
            if dropped:
                _set_dac(True)

    # -- file events -----------------------------------------------------------------------------
    @staticmethod
    def _in_folder(p: Path, act: Callable[[], None]) -> None:
        """Make ``p``'s folder and act in it. Cleanup removes empty folders as the model makes
        them (mkdir's own exist_ok check can then see the folder gone, or the act find it
        gone): that is the daemon doing its job, so make it again, a few times."""
        for attempt in range(5):
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                act()
                return
            except (FileExistsError, FileNotFoundError):
                if attempt == 4:
                    raise

    def _write_new(self, rel: str, data: bytes) -> None:
        p = self.path(rel)

        def write() -> None:
            if os.path.lexists(p):
                os.unlink(p)
            with open(p, "xb") as f:
                f.write(data)
        self._in_folder(p, write)
        self.entries[rel] = Entry("file", data)

    def _existing_file(self, rel: str) -> Optional[Entry]:
        e = self.entries.get(rel)
        return e if e is not None and e.kind == "file" and os.path.lexists(self.path(rel)) else None

    def op(self, name: str, rel: str, data: bytes = b"", other: str = "") -> None:
        """Apply one file event; an event on a path that is not what it needs is skipped. While a
        daemon runs, its cleanup may remove a file at any moment: every open is without O_CREAT
        then, and FileNotFoundError skips the event (the model changes only when the event did)."""
        rel, other = (LONG if r == "long" else r for r in (rel, other))
        if name == "big":
            name, data = "create", ((data or b"\0") * (BIG // max(1, len(data)) + 1))[:BIG]
        p = self.path(rel)
        try:
            if name == "create":
                self._write_new(rel, data)
            elif name == "fifo":
                if not os.path.lexists(p):
                    self._in_folder(p, lambda: os.mkfifo(p))
                    self.entries[rel] = Entry("fifo")
            elif name == "delete":
                if os.path.lexists(p):
                    os.unlink(p)
                self.entries.pop(rel, None)
            e = self._existing_file(rel)
            if e is None:
                return
            if name == "append":
                fd = os.open(p, os.O_WRONLY | os.O_APPEND)
                with os.fdopen(fd, "ab") as f:
                    f.write(data)
                e.data += data
            elif name == "rewrite":  # in place: same inode, other bytes
                fd = os.open(p, os.O_RDWR)
                with os.fdopen(fd, "r+b") as f:
                    f.write(data)
                    f.truncate(len(data))
                e.data = data
            elif name == "truncate":
                n = len(data) % (len(e.data) + 1)
                os.truncate(p, n)
                e.data = e.data[:n]
            elif name == "rename" and other != rel:
                dst = self.path(other)
                dst.parent.mkdir(parents=True, exist_ok=True)
                if os.path.isdir(dst):
                    return
                os.rename(p, dst)
                self.entries[other] = self.entries.pop(rel)
            elif name == "unreadable":
                os.chmod(p, 0)
                e.readable = False
            elif name == "readable":
                os.chmod(p, 0o644)
                e.readable = True
        except FileNotFoundError:
            pass  # removed by cleanup meanwhile (or its folder): checked by the invariants

    # -- rules -------------------------------------------------------------------------------------
    @rule(rel=st.sampled_from(PATHS), data=st.binary(max_size=40))
    def create(self, rel: str, data: bytes) -> None:
        self.op("create", rel, data)

    @rule(rel=st.sampled_from(PATHS), data=st.binary(min_size=1, max_size=8))
    def create_big(self, rel: str, data: bytes) -> None:
        """A file sent as a multipart upload (two parts)."""
        self.op("big", rel, data)

    @rule(rel=st.sampled_from(PATHS), data=st.binary(min_size=1, max_size=20))
    def append(self, rel: str, data: bytes) -> None:
        self.op("append", rel, data)

    @rule(rel=st.sampled_from(PATHS), data=st.binary(max_size=40))
    def rewrite(self, rel: str, data: bytes) -> None:
        self.op("rewrite", rel, data)

    @rule(rel=st.sampled_from(PATHS), data=st.binary(max_size=8))
    def truncate(self, rel: str, data: bytes) -> None:
        self.op("truncate", rel, data)

    @rule(rel=st.sampled_from(PATHS))
    def delete(self, rel: str) -> None:
        self.op("delete", rel)

    @rule(rel=st.sampled_from(PATHS), other=st.sampled_from(PATHS))
    def rename(self, rel: str, other: str) -> None:
        self.op("rename", rel, other=other)

    @rule(rel=st.sampled_from(PATHS), readable=st.booleans())
    def permissions(self, rel: str, readable: bool) -> None:
        self.op("readable" if readable else "unreadable", rel)

    @rule(rel=st.sampled_from(PATHS))
    def fifo(self, rel: str) -> None:
        self.op("fifo", rel)

    @rule(mode=st.sampled_from(FAULTS), rel=st.none() | st.sampled_from(PATHS))
    def fault(self, mode: Optional[str], rel: Optional[str]) -> None:
        key = None if rel is None else escape_name(LONG if rel == "long" else rel)
        self.remote.fail(mode, key)
        if key is None:
            self.fault_all = mode
            if mode is None:
                self.fault_keys.clear()
        elif mode is None:
            self.fault_keys.pop(key, None)
        else:
            self.fault_keys[key] = mode

    @rule(rel=st.sampled_from(PATHS))
    def lose(self, rel: str) -> None:
        """The bucket loses an object (someone deleted it, a lifecycle rule): cleanup must notice."""
        rel = LONG if rel == "long" else rel
        r = self.rows().get(rel)
        if r is not None and r.state in ("deleted", "archived"):
            return  # its only copy: losing it is not the daemon's to prevent
        key = escape_name(rel)
        if self.remote.objects.pop(key, None) is not None:
            self.lost.add(key)
            _event("lose: an object taken out of the bucket")

    @rule()
    def retry(self) -> None:
        if self.db.exists():
            with Store(self.db) as s:
                s.retry_parked()

    @rule(mode=st.sampled_from(CLEANUP), exclude_bin=st.booleans())
    def configure(self, mode: str, exclude_bin: bool) -> None:
        self.cleanup, self.exclude_bin = mode, exclude_bin

    @rule(cleanup=st.sampled_from(CLEANUP))
    def settle(self, cleanup: Optional[str] = None) -> None:
        """``once`` to the end (with its cleanup pass, when ``cleanup`` says so); then the eventual
        invariants."""
        if cleanup is not None:
            self.cleanup = cleanup
        d, _ = self._start(run=False)
        code = self._run(d)
        self.check_after_run(clean=True)
        waiting = self.check_settled()
        _event(f"settle: {waiting} file(s) parked")
        _event(f"settle: cleanup {self.cleanup}")
        assert code == (1 if waiting else 0), f"once exited {code} with {waiting} file(s) not in S3"

    OPS = st.tuples(st.sampled_from(["create", "big", "append", "rewrite", "truncate", "delete", "rename", "unreadable",
                                     "readable", "fifo", "reload"]),
                    st.sampled_from(PATHS), st.binary(max_size=30), st.sampled_from(PATHS))

    @rule(ops=st.lists(OPS, max_size=5), crash_after=st.none() | st.integers(0, 4))
    def run_for_a_while(self, ops: List[Tuple[str, str, bytes, str]], crash_after: Optional[int]) -> None:
        """The daemon with events, file events while it runs, then a clean stop or a crash after
        ``crash_after`` more uploads (or when it has nothing left to do)."""
        d, store = self._start(run=True)
        result: Dict[str, object] = {}

        def main() -> None:
            try:
                result["code"] = self._run(d)
            except BaseException as exc:  # reported below
                result["error"] = exc

        t = threading.Thread(target=main, name="model-daemon")
        t.start()
        try:
            _until(lambda: "scheduler" in d.heartbeats or result, 30)
            for name, rel, data, other in ops:
                if name == "reload":
                    self.exclude_bin = not self.exclude_bin
                    self.cleanup = CLEANUP[(CLEANUP.index(self.cleanup) + 1) % len(CLEANUP)]
                    self.config(run=True)
                    d.request_reload()
                else:
                    self.op(name, rel, data, other)
            if crash_after is not None:
                puts = self.remote.calls.get("put_object", 0)
                _until(lambda: self.remote.calls.get("put_object", 0) >= puts + crash_after or _quiet(d), 1.5)
                store.crash()
                self.crashed = True
            else:
                # after a scan and once idle, or after 1.5 s (files retried for ever under a fault
                # never leave it idle): a stop at any moment is as good
                _until(lambda: d.stats.scans >= 1 and _quiet(d), 1.5)
        finally:
            d.request_stop()
            t.join(60)
        assert not t.is_alive(), "the daemon did not stop"
        assert "error" not in result, f"run() raised {result['error']!r}"
        _event("run: crashed" if crash_after is not None else "run: stopped")
        if crash_after is None:
            assert result["code"] == 0, f"a clean stop exited {result['code']}"
        self.check_after_run(clean=crash_after is None)

    # -- invariants --------------------------------------------------------------------------------
    def rows(self) -> Dict[str, object]:
        if not self.db.exists():
            return {}
        with Store(self.db, readonly=True) as s:
            return {r.rel: r for r in s.iter_all()}

    @invariant()
    def no_bug_was_logged(self) -> None:
        assert not self.bugs.lines, "\n".join(self.bugs.lines)

    def check_after_run(self, clean: bool) -> None:
        """What must hold after any run, even one that crashed."""
        self.no_bug_was_logged()
        rows = self.rows()
        for rel, r in rows.items():
            parts = rel.split("/")
            assert not rel.startswith("/") and "" not in parts and ".." not in parts and "." not in parts, rel
            assert not any(p.startswith(".") for p in parts), f"a row for a hidden path: {rel}"
            assert r.state in STATES, r
            if clean:
                assert r.state != "uploading", f"uploading after a clean stop: {r}"
            if r.key is None:
                assert r.state in ("parked", "deleted", "archived") and r.error_kind in ("collision", None), r
            if r.state in ("failed", "parked"):
                assert r.last_error and r.error_kind, f"{r.state} without its error: {r}"
            if r.state == "failed":
                assert r.next_attempt_at is not None, f"failed without a next attempt: {r}"
            if r.state in DONE_STATES:
                # a multipart upload is proven by its ETag (md5-N), recorded at completion; a single PUT by its MD5
                assert r.etag and (r.md5 or "-" in r.etag) and r.uploaded_at, f"{r.state} without its proof: {r}"
                obj = self.remote.objects.get(r.key)
                if r.state == "deleted":  # its only copy: exactly the bytes recorded
                    assert obj is not None, f"deleted but the remote holds nothing: {r}"
                    # (unless a new file at the path was uploaded to the same key, as README's "Reused
                    # paths" says, and a crash lost its row's move from deleted to pending)
                    assert obj[1] == r.etag or self.crashed, f"deleted but the remote holds other bytes: {r}"
                    continue
                assert obj is not None or r.key in self.lost, f"{r.state} but the remote holds nothing: {r}"
                if obj is None:
                    continue
                elif _signature(self.path(rel)) == r.signature:
                    # (a crash between a changed file's PUT and the commit of its row leaves S3 a
                    # version newer than the row's; the file then no longer has the row's signature)
                    assert obj[0] == self.path(rel).read_bytes(), f"uploaded, but S3 holds other bytes: {r}"
        # nothing deleted without proof
        for rel, e in list(self.entries.items()):
            if os.path.lexists(self.path(rel)):
                continue
            r = rows.get(rel)
            # deleted; or still uploaded when the run crashed between the removal and its record
            assert e.kind == "file" and r is not None and r.state in ("deleted", "uploaded"), \
                f"{rel} is gone without the test deleting it, and its row is {r}"
            obj = self.remote.objects.get(r.key)
            assert obj is not None and obj[0] == e.data, f"{rel} was deleted but the remote does not hold its bytes"
            del self.entries[rel]  # cleanup's, proven: the test forgets it
        self.no_quarantine_left()

    def no_quarantine_left(self) -> None:
        for dirpath, _, filenames in os.walk(self.root):
            left = [n for n in filenames if is_quarantine_name(n)]
            assert not left or self.crashed, f"quarantined files left in {dirpath}: {left}"

    def check_settled(self) -> int:
        """After ``once``: every regular file present is uploaded with its bytes, or parked for a
        reason the model knows. Returns how many files are not in S3."""
        rows = self.rows()
        waiting = sum(1 for r in rows.values() if r.state not in DONE_STATES)
        for rel, r in rows.items():
            assert r.state in DONE_STATES + ("parked",), f"once ended with {r.state}: {r}"
            if r.state == "parked":
                assert os.path.isfile(self.path(rel)) and not os.path.islink(self.path(rel)), \
                    f"a parked row for a path that holds no regular file: {r}"
        for rel, e in self.entries.items():
            p = self.path(rel)
            if e.kind != "file" or (self.exclude_bin and rel.endswith(".bin")):
                assert e.kind == "file" or rows.get(rel) is None or rows[rel].state in DONE_STATES, rows.get(rel)
                continue
            r = rows.get(rel)
            assert r is not None, f"no row for {rel}"
            assert p.read_bytes() == e.data, f"{rel} does not hold what the test wrote"
            if r.state == "uploaded":
                s = os.stat(p)
                assert (s.st_size, s.st_mtime_ns, s.st_ino) == r.signature, f"uploaded row of another version: {r}"
                obj = self.remote.objects.get(r.key)
                # an object the bucket lost is noticed by cleanup's proof only (when a pass looks at it)
                assert obj is not None or r.key in self.lost, f"uploaded, but S3 holds nothing for {rel}"
                assert obj is None or obj[0] == e.data, f"S3 holds other bytes for {rel}"
                continue
            assert r.state == "parked", r
            too_long = key_problem(r.key or escape_name(rel)) is not None
            reasons = {"invalid": too_long or self.fault_for(rel) == "permanent",
                       "local": not e.readable,
                       "throttled": self.fault_for(rel) == "throttled",
                       "server": self.fault_for(rel) == "server"}
            assert reasons.get(r.error_kind), f"parked without a reason the model knows: {r}"
        return waiting


def _signature(p: Path) -> Optional[Tuple[int, int, int]]:
    try:
        s = os.lstat(p)
    except OSError:
        return None
    return (s.st_size, s.st_mtime_ns, s.st_ino) if stat_mod.S_ISREG(s.st_mode) else None


def _event(what: str) -> None:
    """Count ``what`` in hypothesis's statistics (--hypothesis-show-statistics); a no-op outside a test."""
    if currently_in_test_context():
        event(what)


def _quiet(d: Daemon) -> bool:
    """Nothing tracked, queued or in flight (a hint for when to stop; nothing relies on it)."""
    return not (len(d.scheduler.tracker) or d.scheduler.ready or d.dispatch.queue.qsize() or d.inflight or d.candidates.qsize())


def _until(cond, timeout: float) -> bool:
    """Poll ``cond`` until true or ``timeout``; returns whether it became true (not a failure)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


UploaderModel.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                           suppress_health_check=list(HealthCheck))
test_random_histories_of_files_faults_crashes_and_commands_keep_every_invariant = UploaderModel.TestCase


# -- what the model found on its first runs, replayed step by step (each failed before its fix) ------------

def _replay(*steps: Tuple[str, tuple]) -> None:
    m = UploaderModel()
    try:
        for name, args in steps:
            getattr(m, name)(*args)
    finally:
        m.teardown()


def test_a_parked_file_replaced_by_a_fifo_is_forgotten_instead_of_waiting_for_ever():
    # its row stayed parked: only a path that no longer existed was forgotten, and a FIFO exists, so
    # 'status' listed it as not in S3 and 'once' exited 1 on every run, for ever
    _replay(("create", ("a.txt", b"x")), ("fault", ("permanent", None)), ("settle", ()),
            ("delete", ("a.txt",)), ("fifo", ("a.txt",)), ("fault", (None, None)), ("settle", ()))


def test_a_changed_file_that_no_longer_matches_include_exclude_does_not_make_once_fail():
    # cleanup found it changed since its upload and queued it again; the scheduler's event about it
    # saw a file it does not take (excluded) and left the row pending: 'once' then exited 1
    _replay(("create", ("b.bin", b"")), ("settle", ()), ("append", ("b.bin", b"\0")),
            ("configure", ("age", True)), ("settle", ()))


def test_a_new_file_with_the_signature_of_the_one_cleanup_removed_is_uploaded(workspace, s3_client):
    # cleanup removed a proven file; a writer created a new one at once, which got the freed inode back
    # within the same timestamp tick with the same size: same (size, mtime, inode) as the 'deleted'
    # row, so every scan took it for the removed file and it was never uploaded (nor ever deleted)
    p = workspace.inbox / "cam" / "a.txt"
    p.parent.mkdir()
    p.write_bytes(b"new bytes")
    s = os.stat(p)
    old_md5 = hashlib.md5(b"old bytes").hexdigest()
    s3_client.put_object(Bucket=workspace.bucket, Key="cam/a.txt", Body=b"old bytes")  # the removed file's
    with Store(workspace.state / "state.db") as store:
        store.discover("cam/a.txt", "cam/a.txt", s.st_size, s.st_mtime_ns, s.st_ino)
        store.start_upload("cam/a.txt", s.st_size, s.st_mtime_ns, s.st_ino)
        store.finish_upload("cam/a.txt", s.st_size, s.st_mtime_ns, s.st_ino, old_md5, old_md5)
        store.mark_removed("cam/a.txt", "deleted")
    workspace.config()
    r = cli("once", "-c", str(workspace.config_path), env=workspace.server.env())
    assert r.returncode == 0, r.stderr
    assert get_bytes(s3_client, workspace.bucket, "cam/a.txt") == b"new bytes"
    with Store(workspace.state / "state.db", readonly=True) as store:
        assert store.get("cam/a.txt").state == "uploaded"


def test_a_listing_taken_before_cleanup_removed_a_file_does_not_bring_its_row_back(tmp_path):
    # (the fix above first took any file listed at a deleted row's path for a new one: a rescan's
    # listing made just before cleanup removed the proven file then moved its row back to pending,
    # and the row, which holds the key of the object that is the file's only copy, was forgotten)
    from s3_uploader.config import parse_config

    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    p = root / "sub" / "d.txt"
    p.write_bytes(b"proven")
    cfg = parse_config(f"[watch]\ndirectory_to_watch = {root}\n[s3]\nbucket = b\n"
                       f"[daemon]\ndb_path = {tmp_path / 's.db'}\n")
    with Store(cfg.daemon.db_path) as store:
        d = Daemon(cfg, MemoryRemote(), store)
        listed = d.scanner.stat_one("sub/d.txt")  # the rescan's listing
        md5 = hashlib.md5(b"proven").hexdigest()
        store.discover("sub/d.txt", "sub/d.txt", listed.size, listed.mtime_ns, listed.ino)
        store.start_upload("sub/d.txt", listed.size, listed.mtime_ns, listed.ino)
        store.finish_upload("sub/d.txt", listed.size, listed.mtime_ns, listed.ino, md5, md5)
        p.unlink()  # cleanup removes the proven file, then marks its row
        store.mark_removed("sub/d.txt", "deleted")
        d.discovery.diff_folder("sub", [listed])
        assert store.get("sub/d.txt").state == "deleted"
        assert d.candidates.empty()

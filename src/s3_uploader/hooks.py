"""Delivering the hooks' events: a command per event, a webhook POST per event, at least once.

The events are rows of the state database (:mod:`s3_uploader.events`), recorded with the move that
caused them. :class:`Hooks` delivers them on its own threads, so nothing it does can delay an
upload, a cleanup pass or a shutdown:

- the ``hooks`` thread finds the events due (at most one per free worker), commits the store first
  (a hook never hears of a move that a crash could still undo) and hands them to
- :data:`WORKERS` ``hook-N`` threads, each delivering one event at a time: the command for its
  event (``[hooks] on_uploaded`` ...) is split as a shell would (:func:`shlex.split`) and run without
  a shell, in its own process group, with the event in ``S3U_*`` environment variables and its
  output captured; after ``hook_timeout`` the whole group is killed. The webhook is a POST of one
  JSON object (stdlib :mod:`urllib`, redirects not followed, HTTPS trusting the CAs the S3
  endpoint is trusted with: :func:`~s3_uploader.remote.trust_bundle`). Exit status 0, or a 2xx
  answer, is delivered; anything else (a timeout included) is a failed attempt, retried with a
  backoff until ``hook_max_attempts``, then given up with one ERROR line.

Every ``[hooks]`` key is read when an event is delivered, so a reload applies to the next one; an
event whose target a reload removed is dropped. :meth:`Hooks.stop` kills the hooks still running
(their process groups) and leaves their events pending: the next start delivers them, as it does
after a ``kill -9``. Delivery is at least once: a hook may run again for an event it already
handled when the daemon died before recording that it did.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import events
from .events import COMMAND_KEY, EVENTS, TARGETS, Event, EventLog
from .store import Store, StoreError, display

log = logging.getLogger(__name__)

WORKERS = 4  # deliveries at once: a hook that hangs holds one until hook_timeout, never an upload
RESULTS = ("delivered", "retried", "given_up")
PRUNE_INTERVAL = 3600.0  # seconds between prunes of given-up rows
OUTPUT_SHOWN = 300  # characters of a failed hook's output (its end) in the log line
KILL_WAIT = 2.0  # seconds to collect a killed hook's last output


class _NotConfigured(Exception):
    """The event's target is no longer configured (a reload removed it)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer that is not 2xx (urllib would turn the POST into a GET)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def iso_time(at: float) -> str:
    """``at`` (Unix time) as ISO 8601 UTC, e.g. ``2026-11-30T11:52:03Z``."""
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def payload(ev: Event, url: str) -> Dict[str, Any]:
    """The webhook's JSON object for ``ev`` (``url``: the presigned GET URL or empty)."""
    return {"event": ev.event, "bucket": ev.bucket, "key": ev.key, "size": ev.size, "etag": _etag(ev),
            "path": display(ev.path), "rel": display(ev.rel), "url": url, "time": iso_time(ev.at),
            "error": ev.error}


def environment(ev: Event, url: str, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The hook's environment: ``base`` (the daemon's own by default) plus the ``S3U_*`` variables."""
    env = dict(os.environ if base is None else base)
    env.update(S3U_EVENT=ev.event, S3U_PATH=ev.path, S3U_REL=ev.rel, S3U_BUCKET=ev.bucket, S3U_KEY=ev.key or "",
               S3U_SIZE="" if ev.size is None else str(ev.size), S3U_ETAG=_etag(ev), S3U_ERROR=ev.error or "",
               S3U_URL=url, S3U_TIME=iso_time(ev.at))
    return env


def _etag(ev: Event) -> str:
    return (ev.etag or "").strip('"')


def _shorten(output: bytes) -> str:
    text = " ".join(output.decode("utf-8", "replace").split())
    return f": ...{text[-OUTPUT_SHOWN:]}" if len(text) > OUTPUT_SHOWN else (f": {text}" if text else "")


class Hooks:
    """Delivers the events of ``store`` (see the module docstring). ``config()`` is the live Config,
    ``remote()`` the Remote (for presigned URLs and its TLS trust), ``clock`` the wall clock."""

    def __init__(self, store: Store, config: Callable[[], Any], remote: Callable[[], Any], *,
                 clock: Callable[[], float] = time.time, workers: int = WORKERS):
        self.store = store
        self.config = config
        self.remote = remote
        self.clock = clock
        self.workers = workers
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.pending = 0  # events waiting, as last counted (the metrics gauge)
        self._jobs: "queue.Queue[Optional[Event]]" = queue.Queue()
        self._lock = threading.Lock()
        self._busy: Set[int] = set()  # ids handed to a worker and not yet done
        self._procs: "Set[subprocess.Popen[bytes]]" = set()  # hooks running now
        self._counts: Dict[Tuple[str, str, str], int] = {(t, e, r): 0 for t in TARGETS for e in EVENTS
                                                         for r in RESULTS}
        self._threads: List[threading.Thread] = []
        self._ssl: Optional[Tuple[str, ssl.SSLContext]] = None

    def event_log(self) -> EventLog:
        """The store's side (``store.events``): records events, and wakes the delivery thread."""
        return EventLog(self.config, self.clock, on_record=self.wake.set)

    def counts(self) -> Dict[Tuple[str, str, str], int]:
        """Deliveries since start by (target, event, result): the metrics' counter."""
        with self._lock:
            return dict(self._counts)

    # -- threads --------------------------------------------------------------------------------
    def start(self) -> "Hooks":
        self._spawn("hooks", self._dispatch)
        for i in range(self.workers):
            self._spawn(f"hook-{i}", self._work)
        return self

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def threads(self) -> List[threading.Thread]:
        return list(self._threads)

    def stop(self) -> None:
        """Stop delivering at once: the hooks running now are killed (their process groups) and their
        events stay pending for the next start. Returns without waiting (see :meth:`threads`)."""
        self.stop_event.set()
        self.wake.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _kill_group(proc)
        for _ in range(self.workers):
            self._jobs.put(None)

    def _dispatch(self) -> None:
        prune_at = 0.0
        while not self.stop_event.is_set():
            self.wake.clear()
            now = self.clock()
            try:
                if now >= prune_at:
                    with self.store.connection(write=True) as conn:
                        events.prune(conn, now - events.GIVEN_UP_KEPT)
                    prune_at = now + PRUNE_INTERVAL
                self._hand_out(now)
            except StoreError as exc:  # the daemon's own threads say it and stop; try again later
                log.debug("Hooks: the state database refused (%s)", exc)
            except Exception:
                log.exception("Hooks: error handing out events; trying again in a second")
            self.wake.wait(1.0)
            self.stop_event.wait(0.05)  # a burst of moves wakes this once, not once per file

    def _hand_out(self, now: float) -> None:
        with self._lock:
            busy = list(self._busy)
        with self.store.connection() as conn:
            ready = events.due(conn, now, self.workers - len(busy), busy)
            self.pending = conn.execute("SELECT count(*) FROM hook_events WHERE state = 'pending'").fetchone()[0]
        if not ready:
            return
        self.store.commit()  # the moves behind these events are durable before anyone hears of them
        with self._lock:
            self._busy.update(ev.id for ev in ready)
        for ev in ready:
            self._jobs.put(ev)

    def _work(self) -> None:
        while True:
            ev = self._jobs.get()
            if ev is None:
                return
            try:
                self._handle(ev)
            except Exception:
                if not self.stop_event.is_set():  # after stop, the store may be closed: pending it stays
                    log.exception("Hooks: error delivering event %d; it is tried again", ev.id)
            finally:
                with self._lock:
                    self._busy.discard(ev.id)
                self.wake.set()

    # -- one delivery -----------------------------------------------------------------------------
    def _handle(self, ev: Event) -> None:
        if self.stop_event.is_set():
            return
        cfg = self.config()
        what = f"{'hook ' + COMMAND_KEY[ev.event] if ev.target == 'command' else 'webhook'} ({ev.event} " \
               f"{display(ev.rel)})"
        try:
            error = self.deliver(ev, cfg)
        except _NotConfigured:
            with self.store.connection(write=True) as conn:
                events.dropped(conn, ev.id)
            log.info("Hooks: %s dropped: no longer configured", what)
            return
        if error is not None and self.stop_event.is_set():
            return  # killed by the shutdown: the next start delivers it
        with self.store.connection(write=True) as conn:
            if error is None:
                events.delivered(conn, ev.id)
                result = "delivered"
            else:
                again = events.failed(conn, ev.id, error, self.clock(), cfg.hooks.hook_max_attempts)
                result = "retried" if again is not None else "given_up"
        with self._lock:
            self._counts[(ev.target, ev.event, result)] += 1
        attempt = ev.attempts + 1
        if result == "delivered":
            log.debug("Hooks: %s delivered (attempt %d)", what, attempt)
        elif result == "retried":
            log.warning("Hooks: %s failed (attempt %d of %d; tried again in %gs): %s", what, attempt,
                        cfg.hooks.hook_max_attempts, events.backoff(attempt), error)
        else:
            log.error("Hooks: %s given up after %d attempt(s): %s", what, attempt, error)

    def deliver(self, ev: Event, cfg: Any) -> Optional[str]:
        """Deliver ``ev`` under ``cfg`` once: None when delivered, else what went wrong (one line)."""
        h = cfg.hooks
        if ev.target == "command":
            command = getattr(h, COMMAND_KEY[ev.event])
            if not command:
                raise _NotConfigured()
            return self.run_command(shlex.split(command), environment(ev, self.url(ev, cfg)), h.hook_timeout)
        if not h.webhook_url:
            raise _NotConfigured()
        return self.post(h.webhook_url, payload(ev, self.url(ev, cfg)), h.hook_timeout, cfg)

    def url(self, ev: Event, cfg: Any) -> str:
        """A presigned GET URL of ``ev``'s object when ``presign_ttl`` is set and S3 holds it, else ""."""
        ttl = cfg.hooks.presign_ttl
        if not ttl or not ev.key or ev.event == "parked":
            return ""
        remote = self.remote()
        if getattr(remote, "bucket", None) != ev.bucket:
            return ""  # recorded for another bucket (changed since): this remote cannot sign for it
        try:
            return str(remote.presign_get(ev.key, int(ttl)))
        except Exception as exc:
            log.warning("Hooks: cannot presign a URL for %s (%s); S3U_URL is empty", ev.key, exc)
            return ""

    def run_command(self, argv: List[str], env: Dict[str, str], timeout: float) -> Optional[str]:
        """Run ``argv`` without a shell in its own process group; None when it exits 0, else why not.
        After ``timeout`` seconds (or at :meth:`stop`) the group is killed."""
        kw: Dict[str, Any] = {}
        if sys.platform == "win32":
            kw["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kw["start_new_session"] = True
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, **kw)
        except (OSError, ValueError) as exc:
            return f"cannot run {argv[0] if argv else '(empty command)'}: {getattr(exc, 'strerror', None) or exc}"
        with self._lock:
            self._procs.add(proc)
        if self.stop_event.is_set():  # stop() came between its look at the running hooks and this one
            _kill_group(proc)
        try:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return f"killed after hook_timeout ({timeout:g}s){_shorten(_collect(proc))}"
        finally:
            with self._lock:
                self._procs.discard(proc)
        if proc.returncode != 0:
            how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
            return f"{how}{_shorten(out or b'')}"
        return None

    def post(self, url: str, body: Dict[str, Any], timeout: float, cfg: Any) -> Optional[str]:
        """POST ``body`` as JSON to ``url``; None on a 2xx answer, else why not."""
        req = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "s3-uploader"})
        handlers: List[Any] = [_NoRedirect()]
        if url.lower().startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=self._ssl_context(cfg)))
        try:
            with urllib.request.build_opener(*handlers).open(req, timeout=timeout) as resp:
                status = resp.status
                resp.read(65536)
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            return f"cannot reach {url}: {exc.reason}"
        except (OSError, ValueError) as exc:  # a timeout (socket.timeout is an OSError), a reset, a bad answer
            return f"{url}: {type(exc).__name__}: {exc}" if str(exc) else f"{url}: {type(exc).__name__}"
        except Exception as exc:  # http.client's errors (e.g. a malformed status line)
            return f"{url}: {type(exc).__name__}: {exc}"
        if not 200 <= status < 300:
            return f"HTTP {status}"
        return None

    def _ssl_context(self, cfg: Any) -> ssl.SSLContext:
        """The CAs the S3 endpoint is trusted with (the remote's :class:`~s3_uploader.remote.Trust`)."""
        from .remote import trust_bundle
        trust = getattr(self.remote(), "trust", None) or trust_bundle(cfg.s3.ca_bundle, None)
        bundle = trust.bundle
        if self._ssl is None or self._ssl[0] != bundle:
            if bundle and os.path.isdir(bundle):
                ctx = ssl.create_default_context(capath=bundle)
            else:
                ctx = ssl.create_default_context(cafile=bundle or None)
            self._ssl = (bundle, ctx)
        return self._ssl[1]


def _kill_group(proc: "subprocess.Popen[bytes]") -> None:
    """Kill ``proc`` and, on POSIX, every process of its group (a shell's children too)."""
    if proc.poll() is not None and sys.platform == "win32":
        return
    try:
        if sys.platform == "win32":
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except OSError:  # gone already
        pass


def _collect(proc: "subprocess.Popen[bytes]") -> bytes:
    """What a killed hook wrote; given up after :data:`KILL_WAIT` (a descendant that left its group
    may still hold the pipe)."""
    try:
        out, _ = proc.communicate(timeout=KILL_WAIT)
        return out or b""
    except subprocess.TimeoutExpired:
        if proc.stdout is not None:
            proc.stdout.close()
        try:
            proc.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            pass
        return b""

"""Prometheus metrics and a health check over HTTP, on ``[daemon] metrics_address``.

``GET /`` is the status page and ``/api/status``, ``/api/history`` its data (:mod:`s3_uploader.statuspage`);
``GET /metrics`` serves the Prometheus text format (via the standard ``prometheus_client`` library,
a regular dependency, so a plain ``pip install s3-uploader`` serves it); ``GET /healthz`` answers 200 ``ok``
when :func:`~s3_uploader.health.health_problem` finds nothing wrong, else 503 with the reason.
Read-only: GET and HEAD are answered, any other method 405.

Numbers come from the daemon's own counters (read on each scrape: cheap) and from a
:class:`~s3_uploader.health.StateSnapshot` of the database (refreshed by the daemon every few
seconds, so a scrape never counts a million rows). Upload durations are drained from
``daemon.stats.upload_seconds`` into a histogram at each scrape.

The server is a stdlib ``ThreadingHTTPServer`` on its own thread, hardened so that no client can
hold the daemon up: at most :data:`MAX_CONNECTIONS` connections are served at once (one more is
answered 503 and closed at once, without a thread); each read and write of a connection times out
after :data:`REQUEST_TIMEOUT` seconds and a connection is closed after :data:`CONNECTION_MAX_AGE`
seconds whatever it does (a client sending one byte every few seconds); handler threads are daemon
threads. :meth:`MetricsServer.stop` cannot hang: it stops the accept loop (which polls), closes the
listening socket, breaks every open connection and waits for their threads only up to a deadline.
"""
from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .health import StateSnapshot, health_note, health_problem
from .statuspage import HEADERS as PAGE_HEADERS
from .statuspage import ROUTES as PAGE_ROUTES
from .statuspage import StatusPage
from .views import Observed

log = logging.getLogger(__name__)

PREFIX = "s3_uploader"
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))

# Connections served at once: a scraper or two and a health check need a handful; beyond this a
# connection is answered 503 and closed by the accept loop, so idle clients cannot pile up threads.
MAX_CONNECTIONS = 16
# Seconds each read (the request line, the headers) or write of a connection may block.
REQUEST_TIMEOUT = 5.0
# Seconds a connection is served at most, however it trickles (a scrape takes milliseconds).
CONNECTION_MAX_AGE = 30.0
# How often the accept loop looks at the stop flag and at connections past their age.
POLL_INTERVAL = 0.25
# What stop() waits at most, in all, for the accept loop and the connection threads.
STOP_WAIT = 1.0
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: 32\r\nConnection: close\r\n\r\ntoo many connections; try later\n")


class MetricsUnavailable(Exception):
    """metrics_address is set but the server cannot run (address in use, a broken installation)."""


def _import_client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        # a dependency of every install: missing only when the install is broken (e.g. pip --no-deps)
        raise MetricsUnavailable(f"metrics_address is set but prometheus-client, a dependency of s3-uploader, "
                                 f"cannot be imported ({exc}); the installation is incomplete: reinstall "
                                 f"s3-uploader with its dependencies, or leave metrics_address empty") from None
    return prometheus_client


class DaemonCollector:
    """A prometheus_client collector that reads the daemon's state when scraped."""

    def __init__(self, daemon: Observed, snapshot: StateSnapshot):
        self.daemon = daemon
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        d, snap = self.daemon, self.snapshot
        st = d.stats
        with st.lock:
            uploaded_files, uploaded_bytes = st.uploaded_files, st.uploaded_bytes
            retries, failures = st.retries, dict(st.failures)
            last_upload, scans, last_scan = st.last_upload_at, st.scans, st.last_scan_at
            freed_files, freed_bytes = st.cleanup_files_freed, st.cleanup_bytes_freed
            events_lost, unwatched = dict(st.events_lost), st.unwatched_folders
        act = d.activity()
        outage_state = act.outage

        files = GaugeMetricFamily(f"{PREFIX}_files", "Files in the state database, by state.", labels=["state"])
        for state, n in snap.counts.items():
            files.add_metric([state], n)
        yield files
        yield CounterMetricFamily(f"{PREFIX}_uploaded_files", "Files uploaded since the daemon started.",
                                  value=uploaded_files)
        yield CounterMetricFamily(f"{PREFIX}_uploaded_bytes", "Bytes uploaded since the daemon started.",
                                  value=uploaded_bytes)
        yield CounterMetricFamily(f"{PREFIX}_upload_retries", "Failed uploads that were scheduled for a retry.",
                                  value=retries)
        fail = CounterMetricFamily(f"{PREFIX}_upload_failures", "Failed upload attempts, by reason.",
                                   labels=["reason"])
        for reason, n in sorted(failures.items()):
            fail.add_metric([reason], n)
        yield fail
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "Files found and not yet handed to an upload worker.",
                                value=act.queued)
        yield GaugeMetricFamily(f"{PREFIX}_uploads_in_flight", "Files being uploaded now.", value=act.uploading)
        since = snap.oldest_waiting_since
        yield GaugeMetricFamily(f"{PREFIX}_oldest_waiting_age_seconds", "Age of the oldest file not yet "
                                "uploaded (0 when every file is in S3).",
                                value=max(0.0, d.wall() - since) if since is not None else 0.0)
        yield GaugeMetricFamily(f"{PREFIX}_last_upload_timestamp_seconds", "When the last upload succeeded "
                                "(Unix time; 0 = none since start).", value=last_upload or 0.0)
        yield GaugeMetricFamily(f"{PREFIX}_last_scan_timestamp_seconds", "When the last full scan ended "
                                "(Unix time; 0 = none yet).", value=last_scan or 0.0)
        yield CounterMetricFamily(f"{PREFIX}_scans", "Full scans of the watched directory.", value=scans)
        yield CounterMetricFamily(f"{PREFIX}_endpoint_outages", "Outages of the S3 endpoint since the daemon "
                                  "started (it stopped answering, or answered only throttling or 5xx).",
                                  value=act.outages)
        yield GaugeMetricFamily(f"{PREFIX}_endpoint_down_seconds", "How long the S3 endpoint has not been answering "
                                "(0 while it answers).", value=outage_state["seconds"] if outage_state else 0.0)
        lost = CounterMetricFamily(f"{PREFIX}_filesystem_events_lost", "Times filesystem events were lost and a "
                                   "rescan made up for them, by reason (overflow: the inotify queue overflowed; "
                                   "watch_limit: more folders went unwatched).", labels=["reason"])
        for reason in ("overflow", "watch_limit"):
            lost.add_metric([reason], events_lost.get(reason, 0))
        yield lost
        yield GaugeMetricFamily(f"{PREFIX}_unwatched_folders", "Folders of the last full scan that raise no "
                                "filesystem events (inotify watch limit or permission): only rescans see them.",
                                value=unwatched)
        yield CounterMetricFamily(f"{PREFIX}_cleanup_freed_files", "Local files deleted or archived by cleanup.",
                                  value=freed_files)
        yield CounterMetricFamily(f"{PREFIX}_cleanup_freed_bytes", "Bytes freed locally by cleanup.",
                                  value=freed_bytes)
        limit = act.bandwidth_limit
        yield GaugeMetricFamily(f"{PREFIX}_bandwidth_limit_bytes_per_second", "Upload bandwidth limit in force "
                                "(0 = unlimited).", value=limit or 0)
        yield from _budget(getattr(d, "budget", None))
        yield GaugeMetricFamily(f"{PREFIX}_upload_concurrency", "Small-file requests kept in flight at most now "
                                "(upload_workers = auto: adapts to the link; a number: that number).",
                                value=act.concurrency)
        yield GaugeMetricFamily(f"{PREFIX}_healthy", "1 when healthy (as /healthz), else 0.",
                                value=0 if health_problem(d) else 1)
        hooks = getattr(d, "hooks", None)  # hooks and webhook (hooks.py)
        deliveries = CounterMetricFamily(f"{PREFIX}_hook_deliveries", "Hook and webhook delivery attempts since "
                                         "start, by target (command, webhook), event and result (delivered; "
                                         "retried: failed, tried again later; given_up).",
                                         labels=["target", "event", "result"])
        for (target, event, result), n in sorted(hooks.counts().items() if hooks is not None else ()):
            deliveries.add_metric([target, event, result], n)
        yield deliveries
        yield GaugeMetricFamily(f"{PREFIX}_hook_events_pending", "Hook and webhook deliveries waiting (recorded "
                                "in the state database, not yet delivered or given up).",
                                value=hooks.pending if hooks is not None else 0)
        yield from _disk_space(d.root)


def _budget(budget: Any) -> Iterator[Any]:
    """The data budgets (budget.py): bytes used and the limit per period, paused or not, resume time."""
    from prometheus_client.core import GaugeMetricFamily
    if budget is None:
        return
    try:
        r = budget.reading()  # reads the store when a new day begins
    except Exception:  # the database's trouble is reported by the daemon's threads; a scrape goes on
        log.debug("Cannot read the data budget", exc_info=True)
        return
    used = GaugeMetricFamily(f"{PREFIX}_budget_bytes_used", "Request body bytes sent in the current local day "
                             "or month, counted while a data budget is set.", labels=["period"])
    limit = GaugeMetricFamily(f"{PREFIX}_budget_bytes_limit", "Data budget per local day or month "
                              "(max_bytes_per_day, max_bytes_per_month; 0 = no limit).", labels=["period"])
    for i, period in enumerate(("day", "month")):
        used.add_metric([period], r.used[i])
        limit.add_metric([period], r.limits[i])
    yield used
    yield limit
    yield GaugeMetricFamily(f"{PREFIX}_budget_paused", "1 while uploads are paused because the data budget is "
                            "used (files wait for the next period), else 0.", value=1 if r.paused else 0)
    yield GaugeMetricFamily(f"{PREFIX}_budget_files_waiting", "Files held back by the data budget until the next "
                            "period.", value=r.waiting if r.paused else 0)
    yield GaugeMetricFamily(f"{PREFIX}_budget_resume_timestamp_seconds", "When uploads paused by the data budget "
                            "resume (Unix time; 0 = not paused).", value=r.resume_at or 0.0)


def _disk_space(root: str) -> Iterator[Any]:
    """Free and total bytes of the watched directory's filesystem (nothing when it cannot be read)."""
    from prometheus_client.core import GaugeMetricFamily
    try:
        usage = shutil.disk_usage(root)
    except OSError:
        return
    yield GaugeMetricFamily(f"{PREFIX}_watch_filesystem_free_bytes", "Bytes free for the daemon's user on the "
                            "watched directory's filesystem.", value=usage.free)
    yield GaugeMetricFamily(f"{PREFIX}_watch_filesystem_size_bytes", "Size in bytes of the watched directory's "
                            "filesystem.", value=usage.total)


class _Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer that serves at most ``max_connections`` connections at once, each on a
    daemon thread for at most ``max_age`` seconds, and can break them all (:meth:`break_connections`).

    ``serve(stop)`` is the accept loop: it returns within :data:`POLL_INTERVAL` of ``stop`` being set
    (unlike ``shutdown()``, which waits for ``serve_forever`` without a deadline).
    """

    daemon_threads = True  # a connection left behind never holds the process at exit
    block_on_close = False  # server_close() joins nothing
    timeout = POLL_INTERVAL  # handle_request() returns after this when no connection comes
    request_queue_size = 64  # the listen backlog: connections past it wait for SYN-ACK retransmits

    def __init__(self, address: Tuple[str, int], handler: type, max_connections: int, max_age: float):
        self.max_connections = max_connections
        self.max_age = max_age
        self._conn_lock = threading.Lock()
        # open connection -> (its thread, when it was accepted)
        self._conns: Dict[socket.socket, Tuple[threading.Thread, float]] = {}
        super().__init__(address, handler)

    def serve(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.handle_request()
            self._close_old()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            full = len(self._conns) >= self.max_connections
            if not full:
                t = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                     name="metrics-conn", daemon=True)
                self._conns[request] = (t, time.monotonic())
        if full:
            self._refuse(request)
            return
        try:
            t.start()
        except RuntimeError:  # no thread to be had: the connection is closed, not served
            self._forget(request)
            self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request: Any) -> None:
        with self._conn_lock:
            self._conns.pop(request, None)

    def _refuse(self, request: socket.socket) -> None:
        """503 and close, from the accept loop, without blocking: what the client sent is read (so
        closing does not reset the connection before it reads the answer) as far as it has come."""
        try:
            request.setblocking(False)
            try:
                request.recv(65536)
            except OSError:
                pass
            request.send(_BUSY)
        except OSError:
            pass
        self.shutdown_request(request)
        log.debug("metrics: refused a connection from %s: %d connections open", request, self.max_connections)

    def _close_old(self) -> None:
        limit = time.monotonic() - self.max_age
        with self._conn_lock:
            old = [c for c, (_, at) in self._conns.items() if at < limit]
        for c in old:
            _break(c)

    def break_connections(self) -> List[threading.Thread]:
        """Break every open connection (its thread's read or write ends at once); their threads."""
        with self._conn_lock:
            conns = list(self._conns.items())
        for c, _ in conns:
            _break(c)
        return [t for _, (t, _) in conns]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that went away or stalled past the timeout: not worth a traceback on stderr
        log.debug("metrics: error serving %s", client_address, exc_info=True)


def _break(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class MetricsServer:
    """Serves /metrics and /healthz for ``daemon`` on ``address`` (host, port) until :meth:`stop`."""

    def __init__(self, daemon: Observed, address: Tuple[str, int], snapshot: StateSnapshot):
        pc = _import_client()
        self.daemon = daemon
        self.snapshot = snapshot
        self.registry = pc.CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(daemon, snapshot))
        self.durations = pc.Histogram(f"{PREFIX}_upload_duration_seconds", "Time to upload one file, from "
                                      "open to confirmed.", buckets=DURATION_BUCKETS, registry=self.registry)
        self._generate, self._content_type = pc.generate_latest, pc.CONTENT_TYPE_LATEST
        self._drain_lock = threading.Lock()
        self.page = StatusPage(daemon)
        try:
            self.httpd = _Server(address, self._handler(), MAX_CONNECTIONS, CONNECTION_MAX_AGE)
        except OSError as exc:
            raise MetricsUnavailable(f"cannot serve metrics on {address[0]}:{address[1]} "
                                     f"({exc.strerror or exc})") from None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> Tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> "MetricsServer":
        self._thread = threading.Thread(target=self.httpd.serve, args=(self._stop,), name="metrics-http",
                                        daemon=True)
        self._thread.start()
        log.info("Serving metrics on http://%s:%d/metrics and /healthz, the status page on /", *self.address)
        return self

    def stop(self, wait: float = STOP_WAIT) -> List[str]:
        """Stop serving, whatever the clients do: the accept loop ends (it polls), the listening
        socket is closed, every open connection is broken. Waits at most ``wait`` seconds in all for
        the accept loop and the connection threads; returns the names of the threads still running
        then (daemon threads: they cannot hold the process at exit)."""
        deadline = time.monotonic() + wait
        self._stop.set()
        left: List[threading.Thread] = []
        if self._thread is not None:
            self._thread.join(wait)
            if self._thread.is_alive():
                left.append(self._thread)
            self._thread = None
        self.httpd.server_close()
        for t in self.httpd.break_connections():
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                left.append(t)
        return [t.name for t in left]

    def drain_durations(self) -> None:
        """Move the upload durations recorded since the last scrape into the histogram."""
        st = self.daemon.stats
        with self._drain_lock:
            with st.lock:
                taken, st.upload_seconds[:] = list(st.upload_seconds), []
            for s in taken:
                self.durations.observe(s)

    def render(self) -> bytes:
        self.drain_durations()
        return self._generate(self.registry)

    def _handler(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT  # set on the connection's socket: every read and write is bounded
            head_only = False  # answering HEAD: what GET would, without the body

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path, _, query = self.path.partition("?")
                try:
                    if path in PAGE_ROUTES:
                        code, body, ctype = server.page.answer(path, query, time.monotonic())
                        self._reply(code, body, ctype, PAGE_HEADERS)
                    elif path == "/metrics":
                        self._reply(200, server.render(), server._content_type)
                    elif path == "/healthz":
                        problem = health_problem(server.daemon)
                        if problem is None:
                            note = health_note(server.daemon)
                            self._reply(200, f"ok; degraded: {note}\n".encode("utf-8") if note else b"ok\n")
                        else:
                            self._reply(503, f"unhealthy: {problem}\n".encode("utf-8"))
                    else:
                        self._reply(404, b"not found: try /, /metrics or /healthz\n")
                except Exception:
                    log.exception("Error serving %s", path)
                    self._reply(500, b"internal error\n")

            def do_HEAD(self) -> None:  # noqa: N802 - http.server API
                self.head_only = True
                try:
                    self.do_GET()
                finally:
                    self.head_only = False

            def __getattr__(self, name: str) -> Any:
                # every other method (POST, PUT, DELETE, ...): nothing here changes state
                if name.startswith("do_"):
                    return lambda: self._reply(405, b"read-only: only GET and HEAD\n", extra={"Allow": "GET, HEAD"})
                raise AttributeError(name)

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                       extra: Optional[Dict[str, str]] = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if not self.head_only:
                    self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:  # scrapes every 15s would flood the log
                log.debug("metrics: %s " + fmt, self.address_string(), *args)

        return Handler

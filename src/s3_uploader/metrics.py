"""Prometheus metrics and a health check over HTTP, on ``[daemon] metrics_address``.

``GET /metrics`` serves the Prometheus text format (via the standard ``prometheus_client`` library,
a regular dependency, so a plain ``pip install s3-uploader`` serves it); ``GET /healthz`` answers 200 ``ok``
when :func:`~s3_uploader.health.health_problem` finds nothing wrong, else 503 with the reason.

Numbers come from the daemon's own counters (read on each scrape: cheap) and from a
:class:`~s3_uploader.health.StateSnapshot` of the database (refreshed by the daemon every few
seconds, so a scrape never counts a million rows). Upload durations are drained from
``daemon.stats.upload_seconds`` into a histogram at each scrape.

The server is a stdlib ``ThreadingHTTPServer`` on its own thread; :meth:`MetricsServer.stop`
shuts it down and joins every thread it started.
"""
from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Optional, Tuple

from .health import StateSnapshot, health_problem

log = logging.getLogger(__name__)

PREFIX = "s3_uploader"
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


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

    def __init__(self, daemon: Any, snapshot: StateSnapshot):
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
            freed_files = getattr(st, "cleanup_files_freed", 0)
            freed_bytes = getattr(st, "cleanup_bytes_freed", 0)
        with d.inflight_lock:
            inflight = len(d.inflight)

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
                                value=d.queue_depth())
        yield GaugeMetricFamily(f"{PREFIX}_uploads_in_flight", "Files being uploaded now.", value=inflight)
        since = snap.oldest_waiting_since
        yield GaugeMetricFamily(f"{PREFIX}_oldest_waiting_age_seconds", "Age of the oldest file not yet "
                                "uploaded (0 when every file is in S3).",
                                value=max(0.0, d.wall() - since) if since is not None else 0.0)
        yield GaugeMetricFamily(f"{PREFIX}_last_upload_timestamp_seconds", "When the last upload succeeded "
                                "(Unix time; 0 = none since start).", value=last_upload or 0.0)
        yield GaugeMetricFamily(f"{PREFIX}_last_scan_timestamp_seconds", "When the last full scan ended "
                                "(Unix time; 0 = none yet).", value=last_scan or 0.0)
        yield CounterMetricFamily(f"{PREFIX}_scans", "Full scans of the watched directory.", value=scans)
        yield CounterMetricFamily(f"{PREFIX}_cleanup_freed_files", "Local files deleted or archived by cleanup.",
                                  value=freed_files)
        yield CounterMetricFamily(f"{PREFIX}_cleanup_freed_bytes", "Bytes freed locally by cleanup.",
                                  value=freed_bytes)
        limiter = getattr(d, "limiter", None)
        limit = limiter.limit() if limiter is not None else None
        yield GaugeMetricFamily(f"{PREFIX}_bandwidth_limit_bytes_per_second", "Upload bandwidth limit in force "
                                "(0 = unlimited).", value=limit or 0)
        yield GaugeMetricFamily(f"{PREFIX}_healthy", "1 when healthy (as /healthz), else 0.",
                                value=0 if health_problem(d) else 1)


class MetricsServer:
    """Serves /metrics and /healthz for ``daemon`` on ``address`` (host, port) until :meth:`stop`."""

    def __init__(self, daemon: Any, address: Tuple[str, int], snapshot: StateSnapshot):
        pc = _import_client()
        self.daemon = daemon
        self.snapshot = snapshot
        self.registry = pc.CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(daemon, snapshot))
        self.durations = pc.Histogram(f"{PREFIX}_upload_duration_seconds", "Time to upload one file, from "
                                      "open to confirmed.", buckets=DURATION_BUCKETS, registry=self.registry)
        self._generate, self._content_type = pc.generate_latest, pc.CONTENT_TYPE_LATEST
        self._drain_lock = threading.Lock()
        try:
            self.httpd = ThreadingHTTPServer(address, self._handler())
        except OSError as exc:
            raise MetricsUnavailable(f"cannot serve metrics on {address[0]}:{address[1]} "
                                     f"({exc.strerror or exc})") from None
        # request threads are joined by server_close(), so stop() leaves nothing running
        self.httpd.daemon_threads = False
        self.httpd.block_on_close = True
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> Tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> "MetricsServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("Serving metrics on http://%s:%d/metrics and /healthz", *self.address)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

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
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        self._reply(200, server.render(), server._content_type)
                    elif path == "/healthz":
                        problem = health_problem(server.daemon)
                        if problem is None:
                            self._reply(200, b"ok\n")
                        else:
                            self._reply(503, f"unhealthy: {problem}\n".encode("utf-8"))
                    else:
                        self._reply(404, b"not found: try /metrics or /healthz\n")
                except Exception:
                    log.exception("Error serving %s", path)
                    self._reply(500, b"internal error\n")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:  # scrapes every 15s would flood the log
                log.debug("metrics: %s " + fmt, self.address_string(), *args)

        return Handler

"""The status page on ``metrics_address``: ``GET /`` and the two JSON documents it draws from.

- ``/``: one HTML page (``statuspage.html``, a package data file) with everything inline: its CSS,
  its script, and charts the script draws as SVG. Nothing is fetched from elsewhere (a box with no
  internet shows it whole), which its Content-Security-Policy holds it to. It shows what ``status``
  shows, the answer of ``/healthz``, and charts of the last 24 hours and 7 days, and refreshes
  itself (:data:`REFRESH_SECONDS` is what the page uses).
- ``/api/status``: exactly the ``status --json`` object (:func:`s3_uploader.status.status_data`, the
  one function both use), read from the daemon's store.
- ``/api/history?range=24h|7d``: the chart data (:meth:`s3_uploader.history.History.chart`).

Read-only: the HTTP server (metrics.py) answers only GET and HEAD; nothing here writes. A client
that reloads in a loop costs one read of the store per :data:`STATUS_CACHE_SECONDS`.
"""
from __future__ import annotations

import json
import threading
from importlib import resources
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple
from urllib.parse import parse_qs

from .status import status_data
from .history import RANGES

if TYPE_CHECKING:
    from .views import Observed

ROUTES = ("/", "/api/status", "/api/history")
REFRESH_SECONDS = 10  # how often the page fetches /api/status (and /api/history every 6th time)
STATUS_CACHE_SECONDS = 1.0
JSON = "application/json"
HTML = "text/html; charset=utf-8"
# the page may run only its own inline script and style, and fetch only from where it came from
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
}

Answer = Tuple[int, bytes, str]


def page_html() -> bytes:
    """The page, as shipped in the package."""
    return resources.files("s3_uploader").joinpath("statuspage.html").read_bytes()


class StatusPage:
    """The answers to :data:`ROUTES` for a running daemon (its ``store``, ``history`` and ``wall``)."""

    def __init__(self, daemon: "Observed"):
        self.daemon = daemon
        self._html = page_html()
        self._lock = threading.Lock()
        self._status: Optional[Tuple[float, bytes]] = None  # (monotonic time taken, body)

    def answer(self, path: str, query: str, now: float) -> Answer:
        """(HTTP code, body, content type) for ``path`` (one of :data:`ROUTES`) with ``query`` (the
        part after '?'); ``now`` is a monotonic time, for the cache of /api/status."""
        if path == "/":
            return 200, self._html, HTML
        if path == "/api/status":
            return 200, self._status_body(now), JSON
        wanted = parse_qs(query).get("range", ["24h"])[-1]
        if wanted not in RANGES:
            return 400, _json({"error": f"range must be one of {', '.join(RANGES)}"}), JSON
        return 200, _json(self.daemon.history.chart(wanted)), JSON

    def _status_body(self, now: float) -> bytes:
        with self._lock:
            if self._status is None or not 0 <= now - self._status[0] < STATUS_CACHE_SECONDS:
                self._status = now, _json(status_data(self.daemon.store, now=self.daemon.wall()))
            return self._status[1]


def _json(data: Dict[str, Any]) -> bytes:
    return json.dumps(data).encode("utf-8")

"""systemd service notifications (``Type=notify``), with no dependency: a datagram to ``$NOTIFY_SOCKET``.

:class:`SdNotify` is the protocol: newline-separated ``NAME=value`` lines in one datagram to the
AF_UNIX socket systemd names in ``NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace).
Without that variable (not under systemd, or on Windows) every call does nothing.

:class:`ServiceNotifier` is what the daemon says, driven by ``tick(now)`` from the main loop:
``READY=1`` once it is watching, then a ``STATUS=`` line (queued, uploading, failed, last upload)
refreshed every few seconds, ``WATCHDOG=1`` pings at half the ``WATCHDOG_USEC`` interval *only*
while :func:`~s3_uploader.health.health_problem` finds nothing wrong, and ``STOPPING=1`` when it
shuts down. A failed send only logs a warning (once); it never stops the daemon.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Mapping, Optional

from .health import StateSnapshot, health_problem
from .views import Activity, Observed, Stats

log = logging.getLogger(__name__)

STATUS_INTERVAL = 5.0  # seconds between STATUS= refreshes


class SdNotify:
    """A client for systemd's notification socket; ``enabled`` is False when there is none."""

    def __init__(self, address: Optional[str]):
        self.address: Optional[str] = None
        if address and hasattr(socket, "AF_UNIX"):
            # '@name' is Linux's abstract namespace, spelled with a leading NUL byte on the wire
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: Optional[socket.socket] = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "SdNotify":
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``NAME=value``) as one message; True when it was sent."""
        if self.address is None or sys.platform == "win32":  # no AF_UNIX there: address is None already
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)  # a full socket buffer must never stall the daemon
            self._sock.sendto("\n".join(lines).encode("utf-8"), self.address)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("Cannot notify systemd at %s (%s); carrying on without it",
                            self.address.replace("\0", "@"), exc.strerror or exc)
                self._warned = True
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> Optional[float]:
    """Seconds between required WATCHDOG=1 pings, from ``WATCHDOG_USEC`` (None: no watchdog).

    ``WATCHDOG_PID``, when set, must be our own pid: the variables may be inherited by a child.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6


def status_line(activity: Activity, stats: Stats, snapshot: StateSnapshot) -> str:
    """One line for ``systemctl status``: queued, uploading, failed, uploaded and the last upload."""
    c = snapshot.counts
    failed = c.get("failed", 0) + c.get("parked", 0)
    with stats.lock:
        last, uploaded = stats.last_upload_at, stats.uploaded_files
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)) if last else "none yet"
    down = activity.outage
    head = f"S3 endpoint not answering for {down['seconds']:.0f}s; " if down else ""
    return (f"{head}{activity.queued} queued, {activity.uploading} uploading, {failed} failed, "
            f"{uploaded} uploaded since start; last upload {when}")


class ServiceNotifier:
    """What the daemon tells systemd, paced by ``tick(now)`` (monotonic seconds)."""

    def __init__(self, daemon: Observed, client: SdNotify, snapshot: StateSnapshot,
                 watchdog_every: Optional[float] = None, status_interval: float = STATUS_INTERVAL):
        self.daemon = daemon
        self.client = client
        self.snapshot = snapshot
        # ping at half the interval systemd enforces, as sd_watchdog_enabled(3) advises
        self.ping_every = watchdog_every / 2 if watchdog_every else None
        self.status_interval = status_interval
        self.ready = False
        self._next_status = 0.0
        self._next_ping = 0.0
        self._unhealthy: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.client.enabled

    def tick(self, now: float) -> None:
        if not self.client.enabled:
            return
        if not self.ready:
            self.client.notify("READY=1")
            self.ready = True
        if now >= self._next_status:
            self.client.notify("STATUS=" + status_line(self.daemon.activity(), self.daemon.stats, self.snapshot))
            self._next_status = now + self.status_interval
        if self.ping_every is not None and now >= self._next_ping:
            problem = health_problem(self.daemon, now)
            if problem is None:
                self.client.notify("WATCHDOG=1")
                if self._unhealthy is not None:
                    log.info("Healthy again; systemd watchdog pings resumed")
                self._unhealthy = None
            elif problem != self._unhealthy:
                log.warning("Unhealthy (%s): not pinging the systemd watchdog", problem)
                self._unhealthy = problem
            self._next_ping = now + self.ping_every

    def stopping(self) -> None:
        """Say we are stopping (systemd then waits for the exit instead of pinging)."""
        if self.client.enabled:
            self.client.notify("STOPPING=1", "STATUS=Stopping: draining uploads in flight")

    def close(self) -> None:
        self.client.close()

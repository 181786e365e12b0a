"""The parts of a long run (a service, not a single pass): the metrics server, hot reload of the
config file and systemd notifications, with the :class:`~s3_uploader.health.StateSnapshot` of the
database they show, all driven by the daemon's main-thread tick.

They see the daemon only as a :class:`Served` (its typed views, its public reload methods, its
config and store): none of them reads anything else of it.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Protocol

from .config import Config
from .health import StateSnapshot
from .metrics import MetricsServer, MetricsUnavailable
from .notify import SdNotify, ServiceNotifier, watchdog_interval
from .preflight import StartupError
from .reload import ReloadTarget, Reloader, apply_config
from .store import Store
from .views import Observed


class Served(Observed, ReloadTarget, Protocol):
    """A daemon as the service parts see it."""

    cfg: Config

    @property
    def store(self) -> Store: ...


class Service:
    """The metrics server (:meth:`start_metrics`), the reloader and the systemd notifier
    (:meth:`start`), ticked by :meth:`tick`; each is None until started or when not configured."""

    def __init__(self, daemon: Served, snapshot: StateSnapshot):
        self.daemon = daemon
        self.snapshot = snapshot
        self.metrics: Optional[MetricsServer] = None
        self.reloader: Optional[Reloader] = None
        self.notifier: Optional[ServiceNotifier] = None

    def start_metrics(self) -> None:
        """Serve /metrics and /healthz when metrics_address is set; StartupError when it cannot."""
        address = self.daemon.cfg.daemon.metrics_address
        if address:
            try:
                self.metrics = MetricsServer(self.daemon, address, self.snapshot).start()
            except MetricsUnavailable as exc:
                raise StartupError(str(exc)) from None

    def start(self) -> None:
        """Hot reload of the config file (when it came from one), and READY=1 / STATUS / WATCHDOG for
        systemd (when $NOTIFY_SOCKET is set)."""
        d = self.daemon
        if d.cfg.source is not None:
            self.reloader = Reloader(d.cfg.source, lambda: d.cfg, lambda new, changed: apply_config(d, new, changed))
        client = SdNotify.from_environ()
        if client.enabled:
            self.notifier = ServiceNotifier(d, client, self.snapshot, watchdog_interval())

    def tick(self, now: float) -> None:
        """Config reload, state snapshot, systemd notify; ``now`` is monotonic seconds."""
        if self.reloader is not None:
            self.reloader.tick(now)
        if self.metrics is not None or self.notifier is not None:
            self.snapshot.refresh(self.daemon.store, now)
        if self.notifier is not None:
            self.notifier.tick(now)

    def request_reload(self) -> None:
        """Re-read the config file at the next tick. Only sets a flag: safe from signal handlers."""
        if self.reloader is not None:
            self.reloader.request()

    def stopping(self) -> None:
        """Tell systemd we are stopping (it then waits for the exit instead of pinging)."""
        if self.notifier is not None:
            self.notifier.stopping()

    def stop_metrics(self, left: Callable[[List[str], str], None]) -> None:
        """Stop the metrics server; ``left(names, what)`` is told of its threads still running."""
        if self.metrics is not None:
            left(self.metrics.stop(), "stopping the metrics server")

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()

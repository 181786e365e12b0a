"""Hot reload: a running daemon applies an edited ``config.ini`` without a restart, or keeps the old one.

The file is polled (size, mtime and inode, about once a second, from the daemon's main loop); a
change is acted on once the file has stayed the same for one more poll, so a save caught half
written is not read. SIGHUP asks for the same reload at once.

A reload parses and validates the *whole* file. If anything is wrong, every error is logged (one
line each) and the running configuration stays as it was. Otherwise the new configuration is
applied in one swap of the daemon's config (:class:`ReloadTarget`): options marked ``reloadable``
take their new values; a changed restart-only option (directory, bucket, prefix, endpoint, workers, paths) is named in a
warning and keeps its running value. A new bucket, prefix or endpoint applies at the restart, where
the state database follows it (see :mod:`s3_uploader.destination`): changing where keys go while
uploads run would leave rows proven at one destination and sent to another. Uploads in flight are
never interrupted: each file reads the settings once when it starts, and the next file uses the
new ones.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, List, Optional, Protocol, Tuple

from . import logs
from .bandwidth import BandwidthLimiter
from .budget import Budget
from .config import Config, ConfigError, Option, load_config
from .config_checks import cross_checks

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
FILTER_KEYS = ("include", "exclude", "skip_hidden", "follow_symlinks")
ORDER_KEYS = (("upload", "order"), ("upload", "priority"))  # the upload order (order.py)
# where the bytes go: a restart with a new value sends every file still present there (destination.py)
DESTINATION_KEYS = {("s3", "bucket"), ("s3", "prefix"), ("s3", "endpoint_url")}
DESTINATION_NOTE = " (after the restart, every file still present locally is uploaded to the new destination)"

Signature = Optional[Tuple[int, int, int]]
_UNKNOWN = object()


def file_signature(path: Path) -> Signature:
    """(size, mtime_ns, inode) of ``path``, or None when it cannot be stat'ed (gone, no permission)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def merge(running: Config, loaded: Config) -> Tuple[Config, List[Option], List[Option]]:
    """The configuration to run after a reload, and what it changes.

    Returns ``(config, applied, kept)``: reloadable options take ``loaded``'s values (``applied``
    lists those that changed); restart-only options keep ``running``'s (``kept`` lists those whose
    value in the file differs). Raises ConfigError if the mix breaks a rule spanning several keys
    (e.g. a new archive_directory inside the running directory_to_watch).
    """
    values = dict(running.values)
    applied: List[Option] = []
    kept: List[Option] = []
    for opt in running.differences(loaded):
        if opt.reloadable:
            values[(opt.section, opt.key)] = loaded.values[(opt.section, opt.key)]
            applied.append(opt)
        else:
            kept.append(opt)
    errors = list(cross_checks(values))
    if errors:
        where = f"{loaded.source}: " if loaded.source else ""
        raise ConfigError([f"{where}{e} (checked against the running values of the restart-only keys)"
                           for e in errors])
    return Config(values, running.source or loaded.source), applied, kept


def _name(opt: Option) -> str:
    return f"[{opt.section}] {opt.key}"


class Reloader:
    """Watches the daemon's config file and applies changes; driven by ``tick(now)`` from the main loop.

    ``apply(new_config, changed_options)`` makes the daemon use a new configuration; the daemon
    passes :func:`apply_config` on itself.
    """

    def __init__(self, path: Path, running: Callable[[], Config], apply: Callable[[Config, List[Option]], None],
                 poll_interval: float = POLL_INTERVAL):
        self.path = Path(path)
        self.running = running
        self.apply = apply
        self.poll_interval = poll_interval
        # The signature the running config was read from is not known (the file may have been saved
        # between loading it and now), so the first settled look re-reads it; an unchanged file is
        # then applied silently.
        self._seen: object = _UNKNOWN
        self._candidate: object = _UNKNOWN
        self._next_poll = 0.0
        self._requested = False

    def request(self) -> None:
        """Reload at the next tick whatever the file's signature says (SIGHUP). Only sets a flag."""
        self._requested = True

    def tick(self, now: float) -> None:
        if self._requested:
            self._requested = False
            log.info("Reload requested: re-reading %s", self.path)
            self._seen = self._candidate = file_signature(self.path)
            self.reload()
            self._next_poll = now + self.poll_interval
            return
        if now < self._next_poll:
            return
        self._next_poll = now + self.poll_interval
        sig = file_signature(self.path)
        if sig == self._seen:
            self._candidate = sig
            return
        if sig != self._candidate:
            self._candidate = sig  # changed since the last poll: wait until the save is complete
            return
        first = self._seen is _UNKNOWN
        self._seen = sig
        if sig is None:
            log.warning("Config file %s is gone; keeping the running configuration", self.path)
            return
        if not first:
            log.info("Config file changed: re-reading %s", self.path)
        self.reload(quiet_if_unchanged=first)

    def reload(self, quiet_if_unchanged: bool = False) -> bool:
        """Read, validate and apply the file now; True when a new configuration was applied.

        An invalid file is logged error by error and changes nothing.
        """
        try:
            loaded = load_config(self.path)
            new, applied, kept = merge(self.running(), loaded)
        except ConfigError as exc:
            log.error("Config reload failed with %d error(s); keeping the running configuration", len(exc.errors))
            for e in exc.errors:
                log.error("Config error: %s", e)
            return False
        for opt in kept:
            log.warning("Config change to %s requires a restart; keeping the running value%s", _name(opt),
                        DESTINATION_NOTE if (opt.section, opt.key) in DESTINATION_KEYS else "")
        if not applied:
            if kept or not quiet_if_unchanged:
                log.info("Configuration reloaded: no live setting changed")
            else:
                log.debug("Config file %s matches the running configuration", self.path)
            return False
        log.info("Configuration reloaded; changed: %s", ", ".join(_name(o) for o in applied))
        self.apply(new, applied)
        return True


class ReloadTarget(Protocol):
    """What a reload changes in a running daemon (the daemon is one)."""

    limiter: BandwidthLimiter
    budget: Budget

    def use_config(self, new: Config) -> None:
        """Swap in ``new``: everything read from the config where it is used takes it from now on."""

    def use_watch_settings(self, cfg: Config) -> None:
        """Rebuild the filters and the scanner from ``cfg``'s ``[watch]`` section."""

    def request_rescan(self) -> None:
        """Start a full rescan now (and the next ``scan_interval`` from its end)."""

    def wake_scheduler(self) -> None:
        """Let the scheduler re-time its checks now."""


def apply_config(daemon: ReloadTarget, new: Config, changed: List[Option]) -> None:
    """Make ``daemon`` run with ``new``: one swap of the config, then the parts built from it.

    Everything else (stability, retry, cleanup, storage class, SSE, part sizes, shutdown timeout)
    is read from the config where it is used, so the swap is enough for those.
    """
    keys = {(o.section, o.key) for o in changed}
    daemon.use_config(new)
    if any(("watch", k) in keys for k in FILTER_KEYS):
        daemon.use_watch_settings(new)
    if any(s == "watch" for s, _ in keys) or keys & set(ORDER_KEYS):
        # rescan under the new rules (newly included files are found, excluded ones dropped) and
        # start the next scan_interval from now; a new order or priority: the rescan ranks the waiting
        # rows again and hands the backlog on in the new order (the ready jobs are re-sorted at once)
        daemon.request_rescan()
    if keys & {("upload", "max_bandwidth"), ("upload", "bandwidth_schedule")}:
        daemon.limiter.configure(new.upload.max_bandwidth, new.upload.bandwidth_schedule)
    if keys & {("upload", "max_bytes_per_day"), ("upload", "max_bytes_per_month")}:
        # at once: the next hand-over decides by the new limits (files waiting go if they now fit)
        daemon.budget.configure(new.upload.max_bytes_per_day, new.upload.max_bytes_per_month)
    if ("daemon", "log_format") in keys:
        logs.set_format(new.daemon.log_format)
    if ("daemon", "log_level") in keys:
        logs.set_level(new.daemon.log_level)
    daemon.wake_scheduler()  # the scheduler re-times its checks with the new stability settings

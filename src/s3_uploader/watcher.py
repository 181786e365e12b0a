"""Filesystem events as hints: a path that may have changed, never a decision.

watchdog's observer thread calls our handler; the handler only records the relative path in a
bounded, de-duplicating :class:`Hints` set and returns. It catches everything, because an exception
in a handler kills watchdog's observer thread (watchdog #427). Events can be lost, which is why the
periodic rescan is the guarantee; the two ways they are lost are noticed here rather than left to it:

- an inotify queue overflow (the kernel drops events; older watchdog drops the notice too, #654;
  watchdog 7 logs a warning, which :class:`_LostEventsLog` turns into ``on_lost("overflow")``);
- folders that could not be watched (``fs.inotify.max_user_watches`` reached, permission): watchdog
  skips them without a word, so :func:`inotify_watches` counts the watches the kernel actually holds
  for this process (``/proc/self/fdinfo``) and the daemon compares that with the folders it scanned.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from watchdog.events import FileSystemEvent
    from watchdog.observers.api import BaseObserver

OVERFLOW = "overflow"
WATCH_LIMIT = "watch_limit"

log = logging.getLogger(__name__)


class Hints:
    """Paths that events say may have changed, de-duplicated, at most ``limit`` of them.

    When more arrive than fit, they are dropped and ``overflowed`` is set, so the owner can ask
    for a rescan instead. ``urgent`` marks a close-after-write: the file may be complete now.
    """

    def __init__(self, limit: int = 100000, on_add: Optional[Callable[[], None]] = None):
        self.limit = limit
        self._paths: Dict[str, bool] = {}
        self._lock = threading.Lock()
        self._on_add = on_add
        self.overflowed = False

    def add(self, rel: str, urgent: bool = False) -> None:
        with self._lock:
            if rel in self._paths:
                self._paths[rel] = self._paths[rel] or urgent
            elif len(self._paths) >= self.limit:
                self.overflowed = True
                return
            else:
                self._paths[rel] = urgent
        if self._on_add is not None:
            self._on_add()

    def drain(self) -> Tuple[List[Tuple[str, bool]], bool]:
        """Everything collected so far, and whether some was dropped; both are reset."""
        with self._lock:
            items = list(self._paths.items())
            self._paths.clear()
            over, self.overflowed = self.overflowed, False
        return items, over

    def __len__(self) -> int:
        return len(self._paths)


class Watcher:
    """Runs a watchdog observer over ``root`` and turns its events into hints.

    ``on_folder(rel_dir)`` is called for a folder created or moved into the tree, whose files
    produce no events of their own.
    """

    def __init__(self, root: str, hints: Hints, on_folder: Callable[[str], None],
                 on_lost: Optional[Callable[[str], None]] = None):
        self.root = os.path.abspath(root)
        self.hints = hints
        self.on_folder = on_folder
        self.on_lost = on_lost or (lambda reason: None)
        self._observer: Optional[BaseObserver] = None
        self._lost_log: Optional[_LostEventsLog] = None

    def start(self) -> None:
        from watchdog.events import (DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                                     FileModifiedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler)
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def dispatch(self, event: FileSystemEvent) -> None:  # noqa: D401 - watchdog API
                try:
                    watcher._on_event(event)
                except Exception:  # never let an exception reach watchdog's thread
                    log.exception("Error handling filesystem event %r", event)

        self._lost_log = _LostEventsLog(self.on_lost)
        self._lost_log.attach()
        obs = Observer()
        obs.name = "watcher"
        obs.daemon = True
        try:
            # Only the events _on_event uses. On Linux watchdog asks the kernel for just these, so
            # reading a file or listing a folder (IN_OPEN, IN_CLOSE_NOWRITE: our own scans and
            # uploads, and any reader) queues nothing: with every event subscribed, one rescan of a
            # tree of a few thousand folders overflowed the kernel's queue, and the overflow's
            # rescan overflowed it again, for ever.
            obs.schedule(Handler(), self.root, recursive=True,
                         event_filter=[FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileMovedEvent,
                                       DirMovedEvent, FileClosedEvent])
            obs.start()
        except BaseException:
            self._lost_log.detach()
            raise
        self._observer = obs

    def _on_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind in ("opened", "closed_no_write", "deleted"):
            return
        path = getattr(event, "dest_path", None) if kind == "moved" else event.src_path
        if not path:
            return
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        rel = os.path.relpath(path, self.root)
        if rel == "." or rel.startswith(".."):
            return
        rel = rel.replace(os.sep, "/")
        if event.is_directory:
            if kind in ("created", "moved"):
                self.on_folder(rel)
            return
        self.hints.add(rel, urgent=(kind == "closed"))

    def is_alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the observer, waiting at most ``timeout`` seconds for its thread (a daemon thread)."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=timeout)
            self._observer = None
        if self._lost_log is not None:
            self._lost_log.detach()
            self._lost_log = None


class _LostEventsLog(logging.Handler):
    """Hears watchdog say that the kernel dropped events (its only notice of an inotify queue
    overflow: no event reaches a handler) and calls ``on_lost("overflow")``. Never raises."""

    LOGGER = "watchdog.observers"

    def __init__(self, on_lost: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.on_lost = on_lost
        self._logger = logging.getLogger(self.LOGGER)

    def attach(self) -> None:
        self._logger.addHandler(self)
        if self._logger.getEffectiveLevel() > logging.WARNING:
            self._logger.setLevel(logging.WARNING)  # a quieter log level must not hide the notice from us

    def detach(self) -> None:
        self._logger.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage().lower()
            if "overflow" in text or "unable to rebuild" in text:
                self.on_lost(OVERFLOW)
        except Exception:  # a handler must never break the thread that logged
            pass


def inotify_watches(pid: str = "self") -> Optional[int]:
    """How many inotify watches the kernel holds for process ``pid`` (over all its inotify
    instances), from ``/proc/PID/fdinfo``; None where that cannot be read (not Linux)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None
    total, found = 0, False
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                total += sum(1 for line in f if line.startswith("inotify wd:"))
            found = True
        except OSError:
            continue  # closed meanwhile
    return total if found else None


def watch_limit() -> Optional[int]:
    """The per-user inotify watch limit (``fs.inotify.max_user_watches``), None where there is none."""
    for path in ("/proc/sys/user/max_inotify_watches", "/proc/sys/fs/inotify/max_user_watches"):
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            continue
    return None

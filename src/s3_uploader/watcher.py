"""Filesystem events as hints: a path that may have changed, never a decision.

watchdog's observer thread calls our handler; the handler only records the relative path in a
bounded, de-duplicating :class:`Hints` set and returns. It catches everything, because an exception
in a handler kills watchdog's observer thread (watchdog #427). Events can be lost (an inotify queue
overflow is dropped silently, watchdog #654), which is why the periodic rescan is the guarantee.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Dict, List, Optional, Tuple

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

    def __init__(self, root: str, hints: Hints, on_folder: Callable[[str], None]):
        self.root = os.path.abspath(root)
        self.hints = hints
        self.on_folder = on_folder
        self._observer = None
        self.events_seen = 0

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def dispatch(self, event) -> None:  # noqa: D401 - watchdog API
                try:
                    watcher._on_event(event)
                except Exception:  # never let an exception reach watchdog's thread
                    log.exception("Error handling filesystem event %r", event)

        obs = Observer()
        obs.name = "watcher"
        obs.daemon = True
        obs.schedule(Handler(), self.root, recursive=True)
        obs.start()
        self._observer = obs

    def _on_event(self, event) -> None:
        self.events_seen += 1
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

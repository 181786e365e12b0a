"""The daemon's threads: started guarded, joined against deadlines, and those left behind named.

Every thread is a daemon thread, so none can keep the process from exiting; a thread that fails
reports to one callback (the daemon stops with exit code 1); one still running at a shutdown
deadline is named in one WARNING line and left behind, its work resuming at the next start.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Optional

from . import logs

log = logging.getLogger(__name__)

STOP_POLL = 0.1  # how often a join looks for a reason to stop waiting (a second stop signal)


class Threads:
    """The threads one daemon started. ``on_failure(name, exc)`` is called when one raises, unless
    :attr:`stopped` (shutdown has finished: errors of threads left behind are not news)."""

    def __init__(self, on_failure: Callable[[str, Exception], None]):
        self._on_failure = on_failure
        self._threads: List[threading.Thread] = []
        self.left_behind: List[str] = []  # threads still running when shutdown gave up on them
        self.stopped = False

    def spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """Start ``target`` on a daemon thread called ``name``; returns the thread."""
        def run() -> None:
            try:
                target()
            except Exception as exc:
                if self.stopped:
                    log.debug("Thread %s, left behind by shutdown, ended with %r", name, exc)
                    return
                self._on_failure(name, exc)
        t = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(t)
        t.start()
        return t

    def named(self, *names: str) -> List[threading.Thread]:
        return [t for t in self._threads if t.name in names]

    def alive(self) -> Dict[str, bool]:
        """Each thread's name, True while it runs (empty before any started)."""
        return {t.name: t.is_alive() for t in self._threads}

    def join(self, threads: List[threading.Thread], by: float, what: Optional[str],
              give_up: Callable[[], bool] = lambda: False) -> List[str]:
        """Wait for ``threads`` until ``by`` (``time.monotonic``) or until ``give_up()``; returns the
        names of those still alive, said in a WARNING (and kept in :attr:`left_behind`) unless
        ``what`` is None."""
        for t in threads:
            while t.is_alive():
                logs.flush_pending()  # the main thread's tick, which wrote batched lines out, is over
                left = by - time.monotonic()
                if left <= 0 or give_up():
                    break
                t.join(min(left, STOP_POLL))
        alive = [t.name for t in threads if t.is_alive()]
        if what is not None:
            self.left(alive, what)
        return alive

    def left(self, names: List[str], what: str) -> None:
        """Name ``names``, still running at the deadline of ``what``, in one WARNING line."""
        if names:
            self.left_behind += names
            log.warning("Shutdown: %s: left behind, still running: %s (daemon threads: they do not hold up the "
                        "exit; their work resumes at the next start)", what, ", ".join(names))

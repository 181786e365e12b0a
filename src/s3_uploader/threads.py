"""The daemon's threads, two kinds, both daemon threads so none can keep the process from exiting.

- :class:`Threads`: the long-lived stage threads one daemon started, guarded (a thread that fails
  reports to one callback: the daemon stops with exit code 1), joined against deadlines, and those
  still running at a shutdown deadline named in one WARNING line and left behind, their work
  resuming at the next start.
- :class:`DaemonThreads`: an Executor for short calls (part uploads; the asyncio sender's HEADs), so
  a request stuck on a slow link never holds the process after shutdown gave up on it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Executor, Future
from typing import Any, Callable, Dict, List, Optional, TypeVar

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


_T = TypeVar("_T")


class DaemonThreads(Executor):
    """Up to ``size`` daemon threads that run calls (part uploads; the sender's HEADs);
    :meth:`submit` returns a ``concurrent.futures.Future`` (so ``wait()`` and asyncio's
    ``run_in_executor`` take it: an Executor, whose ``shutdown`` does nothing; :meth:`close` ends it).

    Not a ThreadPoolExecutor: the interpreter joins its threads at exit (and ``asyncio.run`` joins
    the loop's default one), so one request stuck on a slow link would hold the process long after
    shutdown gave up on it. These are daemon threads, started as needed, and :meth:`close` waits
    for them only up to a deadline.
    """

    def __init__(self, size: int, name: str):
        self.size = max(1, size)
        self.name = name
        self._q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # released by a thread each time it waits for work
        self._threads: List[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        f: Future[_T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self.name} threads are closed")
            self._q.put((f, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.size:
                t = threading.Thread(target=self._run, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
        return f

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            f, fn, args, kwargs = item
            if f.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # the caller decides (it waits on the Future)
                    f.set_exception(exc)
                else:
                    f.set_result(result)
            del item, f, fn, args, kwargs
            self._idle.release()

    def close(self, timeout: Optional[float] = None) -> List[str]:
        """Take no more parts; each thread ends after the parts already queued. Waits at most
        ``timeout`` seconds (None: until they end); returns the names of the threads still running."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._q.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return [t.name for t in threads if t.is_alive()]

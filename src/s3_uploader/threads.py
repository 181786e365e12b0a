"""Daemon threads behind an Executor: part uploads and the asyncio sender's HEADs run on them, so a
request stuck on a slow link never holds the process after shutdown gave up on it."""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Executor, Future
from typing import Any, Callable, List, Optional, TypeVar

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

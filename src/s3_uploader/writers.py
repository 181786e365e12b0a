"""Is some process still writing this file? One question, answered per platform.

- Linux: the open file descriptors in ``/proc/*/fd`` whose target lies under the watched tree and
  whose ``fdinfo`` flags say write or read-write. One sweep answers for every file; it is cached for
  a short time because a batch of checks asks many times in a row.
- Windows: a file another process holds open cannot be opened with no sharing; we try exactly that.
- Elsewhere (macOS, BSD): no cheap answer; stability of size and mtime must do.

Processes we may not inspect (another user's, when not root) cannot be seen; stability covers them.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, FrozenSet, Optional, Tuple

_ACCMODE = 0o3
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


class WriterProbe:
    """Answers ``is_being_written(path, dev, ino)`` for files under ``root``."""

    def __init__(self, root: str, ttl: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 proc: str = "/proc"):
        self.real_root = os.path.realpath(root)
        self.ttl = ttl
        self.clock = clock
        self.proc = proc
        self._cache: Optional[Tuple[float, FrozenSet[Tuple[int, int]]]] = None
        self.supported = sys.platform.startswith("linux") and os.path.isdir(os.path.join(proc, "self", "fd"))
        if os.name == "nt":
            self.supported = True

    def is_being_written(self, path: str, dev: int, ino: int) -> bool:
        if os.name == "nt":
            return _windows_locked(path)
        if not self.supported:
            return False
        return (dev, ino) in self._writers()

    def _writers(self) -> FrozenSet[Tuple[int, int]]:
        now = self.clock()
        if self._cache is not None and now - self._cache[0] < self.ttl:
            return self._cache[1]
        found = frozenset(_linux_writers(self.proc, self.real_root))
        self._cache = (now, found)
        return found


def _linux_writers(proc: str, real_root: str) -> set:
    """(dev, inode) of every file under ``real_root`` that some visible process has open for writing."""
    out = set()
    me = str(os.getpid())
    prefix = real_root.rstrip("/") + "/"
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit() and p != me]
    except OSError:
        return out
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to see
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if not target.startswith(prefix):
                continue
            try:
                with open(f"{proc}/{pid}/fdinfo/{fd}", "rb") as f:
                    info = f.read(256)
                flags = int(info.split(b"flags:", 1)[1].split()[0], 8)
                if flags & _ACCMODE not in _WRITE_MODES:
                    continue
                st = os.stat(f"{fd_dir}/{fd}")
            except (OSError, IndexError, ValueError):
                continue
            out.add((st.st_dev, st.st_ino))
    return out


def _windows_locked(path: str) -> bool:  # pragma: no cover - exercised on Windows only
    """True when another process holds ``path`` so that it cannot be opened without sharing."""
    import ctypes
    from ctypes import wintypes

    GENERIC_READ = 0x80000000
    OPEN_EXISTING = 3
    FILE_ATTRIBUTE_NORMAL = 0x80
    ERROR_SHARING_VIOLATION = 32
    ERROR_LOCK_VIOLATION = 33
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.CreateFileW.restype = wintypes.HANDLE
    handle = kernel32.CreateFileW(path, GENERIC_READ, 0, None, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, None)
    if handle == wintypes.HANDLE(-1).value:
        return ctypes.get_last_error() in (ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION)
    kernel32.CloseHandle(handle)
    return False

"""Is some process still writing this file? One question, answered per platform.

- Linux, first choice: a read lease. ``fcntl(F_SETLEASE, F_RDLCK)`` on a read-only descriptor is
  refused (EAGAIN) while *any* process on this kernel has the file open for writing (or mapped
  writable), whoever it runs as, and granted otherwise; we release it at once. The kernel grants a
  lease on a file we do not own only with ``CAP_LEASE`` (the shipped systemd unit grants it).
- Linux, fallback (no lease on this file: not ours and no CAP_LEASE, leases disabled, a filesystem
  without leases, a file we may not open): the open file descriptors in ``/proc/*/fd`` whose target
  lies under the watched tree and whose ``fdinfo`` flags say write or read-write. One sweep answers
  for every file; it is cached for a short time because a batch of checks asks many times in a row.
  Without ``CAP_SYS_PTRACE`` another user's ``/proc/PID/fd`` cannot be read, so their writers are
  invisible: :meth:`WriterProbe.blind_spot` says so, for the start-up log and ``s3-uploader check``.
- Windows: a file another process holds open cannot be opened with no sharing; we try exactly that.
- Elsewhere (macOS, BSD): no cheap answer; stability of size and mtime must do.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import sys
import time
from typing import Callable, Dict, FrozenSet, Optional, Set, Tuple

from . import tree

log = logging.getLogger(__name__)
_ACCMODE = 0o3
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)
CAP_SYS_PTRACE = 19
CAP_LEASE = 28
# Network filesystems whose lease answers are not about local writers: NFSv4 and SMB refuse a read
# lease (EAGAIN) whenever the server has not delegated the file to us, which would read as "busy"
# for ever. On them only /proc speaks (and it sees this machine's processes only, as leases would).
NO_LEASE_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs"})
# What the kernel signals a lease holder with when someone opens the file for writing. SIGIO (the
# default) would terminate the daemon if a writer opened the file in the microseconds we hold the
# lease; SIGURG is ignored by default, and the writer is let through as soon as we release.
LEASE_BREAK_SIGNAL = getattr(signal, "SIGURG", 23)
F_SETSIG = 10  # Linux, every architecture; Python's fcntl module does not name it


class WriterProbe:
    """Answers ``is_being_written(path, dev, ino)`` for files under ``root``.

    ``proc`` is where procfs is mounted (tests point it at a fake one); ``leases`` forces file
    leases on or off (None: on where the kernel allows them).
    """

    def __init__(self, root: str, ttl: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 proc: str = "/proc", leases: Optional[bool] = None):
        self.real_root = os.path.realpath(root)
        self._prefix = os.path.join(root, "")  # root with one trailing separator, as the scanner joins paths
        self.ttl = ttl
        self.clock = clock
        self.proc = proc
        self._cache: Optional[Tuple[float, FrozenSet[Tuple[int, int]]]] = None
        linux = sys.platform.startswith("linux")
        self.supported = sys.platform == "win32" or (linux and os.path.isdir(os.path.join(proc, "self", "fd")))
        self.leases = (linux and _leases_enabled(proc)) if leases is None else leases
        self.caps = _effective_caps(proc) if linux else 0
        self._fs_of_dev: Optional[Dict[int, str]] = None
        self._no_lease_devs: Dict[int, str] = {}  # dev -> why leases are not asked there

    def is_being_written(self, path: str, dev: int, ino: int, fresh: bool = False) -> bool:
        """True when some process has the file (``path``, expected to be ``dev``/``ino``) open for
        writing, as far as this process can tell (see :meth:`blind_spot`). Never blocks, never
        follows a symlink, never opens anything outside the watched tree. ``fresh``: where /proc
        decides, a sweep made now, not one up to ``ttl`` old (cleanup's last look before an unlink:
        a writer that opened the file a moment ago must be seen)."""
        if fresh:
            self._cache = None
        if sys.platform == "win32":  # sys.platform, not os.name: mypy's --platform follows this one
            return _windows_locked(path)
        if not self.supported:
            return False
        if self.leases and self._lease_usable(dev):
            answer = self._lease_answer(path, dev, ino)
            if answer is not None:
                return answer
        return (dev, ino) in self._writers()

    def method(self) -> str:
        """How writers are found, in a few words (the start-up log and ``check``)."""
        if sys.platform == "win32":
            return "an open without sharing (sees every process)"
        if not self.supported:
            return "none on this platform (size and mtime stability alone)"
        if self.leases and self.caps >> CAP_LEASE & 1:
            return "file leases (CAP_LEASE: sees every process's writers)"
        if self.caps >> CAP_SYS_PTRACE & 1:
            return ("file leases on files this user owns, /proc for the rest (CAP_SYS_PTRACE: sees every process)"
                    if self.leases else "/proc (CAP_SYS_PTRACE: sees every process)")
        return "file leases on files this user owns, /proc for the rest" if self.leases else "/proc"

    def blind_spot(self) -> Optional[str]:
        """None when every writer on this machine can be seen; else one line: which writers this
        process cannot see, what decides for those files instead, and what to change."""
        if sys.platform == "win32":
            return None
        if not self.supported:
            return ("Writer check: none on this platform; a file still open for writing is judged by size and mtime "
                    "stability alone (raise stable_seconds if writers pause longer than it)")
        fs = self._root_fs()
        if fs in NO_LEASE_FS:
            return (f"Writer check: the watched directory is on {fs}, where file leases do not answer for this "
                    f"machine's writers; /proc is used, which sees only this machine's processes"
                    f"{'' if self.caps >> CAP_SYS_PTRACE & 1 else ' of this user (no CAP_SYS_PTRACE)'}. A file "
                    f"written from elsewhere is judged by size and mtime stability alone: keep stable_seconds "
                    f"longer than its writers pause")
        if (self.leases and self.caps >> CAP_LEASE & 1) or self.caps >> CAP_SYS_PTRACE & 1:
            return None
        if not self.leases:
            fix = ("enable file leases (sysctl fs.leases-enable=1) and grant CAP_LEASE (systemd: "
                   "AmbientCapabilities=CAP_LEASE and CapabilityBoundingSet=CAP_LEASE, as the shipped unit does)")
        else:
            fix = ("grant CAP_LEASE (systemd: AmbientCapabilities=CAP_LEASE and CapabilityBoundingSet=CAP_LEASE, "
                   "as the shipped unit does), or run as the user who writes the files")
        return (f"Writer check cannot see other users' processes writing files uid {os.geteuid()} does not own "
                f"(no CAP_LEASE, and /proc hides their open files): such a file is judged by size and mtime "
                f"stability alone. To fix: {fix}")

    # -- leases -------------------------------------------------------------------------------------
    def _root_fs(self) -> str:
        try:
            return self._fs(os.stat(self.real_root).st_dev)
        except OSError:
            return ""

    def _fs(self, dev: int) -> str:
        if self._fs_of_dev is None:
            self._fs_of_dev = _filesystems(self.proc)
        return self._fs_of_dev.get(dev, "")

    def _lease_usable(self, dev: int) -> bool:
        if dev in self._no_lease_devs:
            return False
        fs = self._fs(dev)
        if fs in NO_LEASE_FS:
            self._no_lease(dev, fs)
            return False
        return True

    def _no_lease(self, dev: int, why: str) -> None:
        """No more leases asked on ``dev``; said once, as /proc alone may not see every writer."""
        self._no_lease_devs[dev] = why
        if sys.platform != "win32" and not self.caps >> CAP_SYS_PTRACE & 1:  # (leases are Linux's)
            log.warning("Writer check: no file leases on the filesystem of device %d:%d (%s); /proc, used instead, "
                        "cannot see other users' processes writing there", os.major(dev), os.minor(dev), why)

    def _lease_answer(self, path: str, dev: int, ino: int) -> Optional[bool]:
        """True: a writer holds it; False: nobody has it open for writing; None: no lease here (not
        ours and no CAP_LEASE, no leases on this filesystem, not a regular file, cannot open)."""
        if sys.platform == "win32":  # never asked there: is_being_written answers first
            return None
        fd = self._open_inside(path)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            if (st.st_dev, st.st_ino) != (dev, ino):
                return True  # replaced since the caller's stat: not the file it asks about; look again later
            import fcntl
            try:
                fcntl.fcntl(fd, F_SETSIG, LEASE_BREAK_SIGNAL)
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return True
                if exc.errno == errno.EINVAL:  # this filesystem has no leases (NFSv3, 9p, ...)
                    self._no_lease(dev, self._fs(dev) or "leases refused: EINVAL")
                return None  # EACCES: not ours and no CAP_LEASE
            # released at once: a writer opening the file now waits for this, not lease-break-time
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            return False
        finally:
            os.close(fd)

    def _open_inside(self, path: str) -> Optional[int]:
        """``path`` opened read-only without blocking, never through a link leading out of the
        tree; None when it cannot be. A path below the root as configured is opened by descriptor
        from it (:func:`s3_uploader.tree.open_file`: one ``openat2`` where Linux has it, which
        refuses any symlink); only when that refuses a symlink on the way, or for any other path,
        is the path resolved (``realpath``, a ``stat`` per component) and checked to stay inside.
        Both answer the same; the first costs a few system calls instead of one per component."""
        if sys.platform == "win32":  # (never asked there)
            return None
        # O_NONBLOCK: an open that would wait (a FIFO, another's write lease) fails instead
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
        if tree.SUPPORTED and path.startswith(self._prefix) and len(path) > len(self._prefix):
            try:
                return tree.open_file(self._prefix[:-1] or os.sep, path[len(self._prefix):].replace(os.sep, "/"), flags)
            except tree.OutsideTree:
                pass  # a symlinked folder on the way: resolved below, as any path
            except OSError as exc:
                if exc.errno != errno.ELOOP:  # (the file itself a symlink: resolved below)
                    return None
        real = os.path.realpath(path)  # the open below must not pass through a link leading out
        if not real.startswith(self.real_root.rstrip(os.sep) + os.sep):
            return None
        try:
            return os.open(real, flags)
        except OSError:
            return None

    # -- /proc ----------------------------------------------------------------------------------
    def _writers(self) -> FrozenSet[Tuple[int, int]]:
        now = self.clock()
        if self._cache is not None and now - self._cache[0] < self.ttl:
            return self._cache[1]
        found = frozenset(_linux_writers(self.proc, self.real_root))
        self._cache = (now, found)
        return found


def _leases_enabled(proc: str) -> bool:
    """fs.leases-enable (1 unless someone turned leases off)."""
    try:
        with open(os.path.join(proc, "sys", "fs", "leases-enable"), "rb") as f:
            return f.read().strip() != b"0"
    except OSError:
        return True


def _effective_caps(proc: str) -> int:
    """This process's effective capability bits (CapEff in /proc/self/status); 0 when unknown."""
    try:
        with open(os.path.join(proc, "self", "status"), "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _filesystems(proc: str) -> Dict[int, str]:
    """st_dev -> filesystem type of every mount this process sees (/proc/self/mountinfo)."""
    out: Dict[int, str] = {}
    if sys.platform == "win32":  # no mounts to read (and no os.makedev)
        return out
    try:
        with open(os.path.join(proc, "self", "mountinfo"), "rb") as f:
            for line in f:
                fields = line.split()
                try:
                    major, minor = fields[2].split(b":")
                    fstype = fields[fields.index(b"-") + 1].decode(errors="replace")
                except (IndexError, ValueError):
                    continue
                out[os.makedev(int(major), int(minor))] = fstype
    except OSError:
        pass
    return out


def _linux_writers(proc: str, real_root: str) -> Set[Tuple[int, int]]:
    """(dev, inode) of every file under ``real_root`` that some visible process has open for writing."""
    out: Set[Tuple[int, int]] = set()
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
    if sys.platform != "win32":  # called only there; this tells mypy, whose linux pass has no WinDLL
        return False
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

"""Tree-safe file operations: act on a file below the watched root without ever leaving the tree.

A path checked and then used by name can change in between: a folder on the way swapped for a
symlink sends the second call outside the tree. These helpers walk from a descriptor of the root to
the folder with ``os.open(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, dir_fd=parent)`` at every step,
so a folder that is a symlink (or not a folder) at the moment of the walk stops it with
:class:`OutsideTree`, and every later call (open, stat, rename, link, unlink, rmdir, mkdir) is
relative to that folder's descriptor: it names the folder that was walked, whatever happens to its
path afterwards.

Pure I/O helpers, no daemon knowledge. The root itself is opened by path (it may legitimately be a
symlink, e.g. a mount point reached through a link); everything below it is not followed.

Windows has no ``dir_fd``: there :func:`open_folder` returns a :class:`Folder` that joins paths and
keeps today's path-based behaviour (``SUPPORTED`` is False). That is the one place the two differ.
"""
from __future__ import annotations

import ctypes
import errno
import os
import secrets
import sys
from typing import Callable, List, Optional, Sequence, Tuple

# Hidden names cleanup gives a file between "checked" and "removed" (see cleanup.Cleaner). The
# scanner never treats a name with this prefix as a file to upload, whatever skip_hidden says.
QUARANTINE_PREFIX = ".s3-uploader-removing-"
NAME_MAX = 255

_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
SUPPORTED = (os.name != "nt" and hasattr(os, "O_DIRECTORY") and hasattr(os, "O_NOFOLLOW")
             and {os.open, os.rename, os.unlink, os.stat, os.link, os.mkdir, os.rmdir} <= os.supports_dir_fd)


class OutsideTree(OSError):
    """A folder on the way is a symlink or not a folder: following it would leave the tree."""


def is_quarantine_name(name: str) -> bool:
    return name.startswith(QUARANTINE_PREFIX)


def quarantine_name(name: str) -> str:
    """A fresh hidden name for ``name`` in its own folder: prefix, 8 random hex digits, '-', the
    name (dropped when the result would exceed NAME_MAX bytes; recovery then matches by signature)."""
    head = f"{QUARANTINE_PREFIX}{secrets.token_hex(4)}-"
    full = head + name
    return full if len(os.fsencode(full)) <= NAME_MAX else head


def original_name(qname: str) -> Optional[str]:
    """The name :func:`quarantine_name` embedded in ``qname``, or None (not one, or dropped)."""
    if not is_quarantine_name(qname):
        return None
    rest = qname[len(QUARANTINE_PREFIX):]
    name = rest[9:] if len(rest) > 9 and rest[8] == "-" else ""
    return name or None


class Folder:
    """A folder below the root, held by descriptor (or by path where ``dir_fd`` is missing).

    Every method takes a single name inside this folder (never a path with separators) and never
    follows a symlink at that name. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, fd: Optional[int], path: str):
        self.fd = fd  # None: path-based (Windows)
        self.path = path  # for messages, and the path-based fallback

    def __enter__(self) -> "Folder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _p(self, name: str) -> str:
        return os.path.join(self.path, name)

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """``os.open`` of ``name`` here with ``O_NOFOLLOW`` added (ELOOP when it is a symlink)."""
        flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        if self.fd is None:
            return os.open(self._p(name), flags, mode)
        return os.open(name, flags, mode, dir_fd=self.fd)

    def lstat(self, name: str) -> os.stat_result:
        if self.fd is None:
            return os.lstat(self._p(name))
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def exists(self, name: str) -> bool:
        try:
            self.lstat(name)
        except FileNotFoundError:
            return False
        return True

    def listdir(self) -> List[str]:
        if self.fd is None:
            return os.listdir(self.path)
        dup = os.open(".", _O_DIR, dir_fd=self.fd)  # scandir(fd) closes nothing, but rewinds a shared offset
        try:
            return os.listdir(dup)
        finally:
            os.close(dup)

    def rename(self, src: str, dst: str) -> None:
        """Rename within this folder; replaces ``dst`` (callers use it only towards a fresh name)."""
        if self.fd is None:
            os.replace(self._p(src), self._p(dst))
        else:
            os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def rename_noreplace(self, src: str, dst: str) -> None:
        """Rename within this folder, never over an existing ``dst`` (FileExistsError then)."""
        move_noreplace(self, src, self, dst)

    def unlink(self, name: str) -> None:
        if self.fd is None:
            os.unlink(self._p(name))
        else:
            os.unlink(name, dir_fd=self.fd)

    def rmdir(self, name: str) -> None:
        if self.fd is None:
            os.rmdir(self._p(name))
        else:
            os.rmdir(name, dir_fd=self.fd)

    def mkdir(self, name: str) -> None:
        if self.fd is None:
            os.mkdir(self._p(name))
        else:
            os.mkdir(name, dir_fd=self.fd)

    def fsync(self) -> None:
        """Make this folder's entries durable (new names, removed names). No-op where folders
        cannot be fsynced (Windows: NTFS journals them) or the filesystem refuses."""
        if self.fd is None:
            return
        try:
            os.fsync(self.fd)
        except OSError:
            pass


def open_folder(root: str, parts: Sequence[str], create: bool = False) -> Folder:
    """The folder ``root/parts...``, reached without following a symlink below ``root``.

    Raises :class:`OutsideTree` when a component is a symlink or not a folder, FileNotFoundError
    when one is missing (unless ``create``: then each missing level, and the root itself, is made,
    and its parent fsynced so the new folder survives a power cut).
    """
    # Windows: path-based, as before (no dir_fd); the caller's checks stand alone. (SUPPORTED is
    # False there already; sys.platform is what mypy's --platform win32 pass understands.)
    if sys.platform == "win32" or not SUPPORTED:
        path = os.path.join(root, *parts)
        if create:
            os.makedirs(path, exist_ok=True)
        if not os.path.isdir(path):
            raise FileNotFoundError(errno.ENOENT, "No such folder", path)
        return Folder(None, path)
    if create and not os.path.isdir(root):  # the root is configured, not walked: made by path
        os.makedirs(root, exist_ok=True)
        _fsync_path(os.path.dirname(os.path.abspath(root)))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    path = root
    try:
        for name in parts:
            path = os.path.join(path, name)
            try:
                nxt = _open_dir_step(name, fd, path)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile by someone else: walk into it like any other
                else:
                    os.fsync(fd)
                nxt = _open_dir_step(name, fd, path)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return Folder(fd, path)


def _fsync_path(path: str) -> None:
    if sys.platform == "win32":  # no O_DIRECTORY (and called only where SUPPORTED)
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_dir_step(name: str, parent: int, path: str) -> int:
    try:
        return os.open(name, _O_DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise OutsideTree(exc.errno, "a folder on the way is a symlink or not a folder", path) from None
        raise


def open_file(root: str, rel: str, flags: int) -> int:
    """Open the file at '/'-separated ``rel`` below ``root`` with ``flags`` plus O_NOFOLLOW, walking
    the folders by descriptor (:func:`open_folder`). ELOOP when the file itself is a symlink.

    Where the kernel has ``openat2`` (Linux 5.6+), the common case is one call that refuses every
    symlink and any way out of the root (:func:`_open_beneath`): the walk's guarantee in three
    system calls instead of two per folder. Whenever it refuses for a reason the walk words
    differently (a symlink, not a folder, a way out), the walk runs and gives its own answer."""
    if _openat2 is not None:
        fd = _open_beneath(root, rel, flags)
        if fd is not None:
            return fd
    parts = rel.split("/")
    with open_folder(root, parts[:-1]) as folder:
        return folder.open(parts[-1], flags)


# openat2(2)'s RESOLVE_* flags: no symlink anywhere on the way, nothing outside the folder given
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # one number on every Linux architecture (the syscall table was unified before it)
# errors after which the walk must run: it tells a symlinked folder (OutsideTree) from a symlinked
# file (ELOOP), and takes the rare path openat2 refuses that the walk allows
_WALK_AGAIN = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EXDEV, errno.EAGAIN, errno.EMLINK})


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_openat2: Optional[Callable[..., int]] = None
if sys.platform == "linux" and SUPPORTED:
    try:
        _openat2 = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):  # pragma: no cover - every glibc and musl has syscall()
        _openat2 = None


def _open_beneath(root: str, rel: str, flags: int) -> Optional[int]:
    """``rel`` below ``root`` opened by one ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``
    relative to a descriptor of the root (opened by path, as :func:`open_folder` does). None when
    the walk must answer instead: openat2 missing or refused by a sandbox (then never asked again),
    or one of :data:`_WALK_AGAIN`. Any other error (the file is missing, not readable) is raised."""
    global _openat2
    call = _openat2
    if call is None or sys.platform == "win32":  # (None there; sys.platform is what mypy's win32 pass follows)
        return None
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    how = _OpenHow(flags, 0o600 if flags & (os.O_CREAT | getattr(os, "O_TMPFILE", 0)) else 0,
                   _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS)
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # syscall() is variadic: every argument in its C width, so no register carries stray high bits
        fd = call(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(rel)),
                  ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        err = ctypes.get_errno() if fd < 0 else 0
    finally:
        os.close(dirfd)
    if fd >= 0:
        return int(fd)
    if err in (errno.ENOSYS, errno.EPERM, errno.E2BIG, errno.EINVAL):  # no openat2 here (or a seccomp filter)
        _openat2 = None
        return None
    if err in _WALK_AGAIN:
        return None
    raise OSError(err, os.strerror(err), os.path.join(root, rel))


_RENAME_NOREPLACE = 1
_renameat2 = None
if sys.platform == "linux" and SUPPORTED:
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _renameat2 = _libc.renameat2
        _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
        _renameat2.restype = ctypes.c_int
    except (OSError, AttributeError):  # no renameat2 in this libc: link + unlink below
        _renameat2 = None


def move_noreplace(src_folder: Folder, src: str, dst_folder: Folder, dst: str) -> None:
    """Move ``src`` to ``dst`` (same filesystem) without ever replacing an existing ``dst``:
    FileExistsError when it is taken. ``renameat2(RENAME_NOREPLACE)`` where the kernel and
    filesystem have it; else a hard link then an unlink of ``src`` (for a moment both names exist:
    a crash there leaves two names of one file, never none); else (no dir_fd, or neither works) a
    check then a rename, which leaves a window a racing creator can slip into.
    """
    if src_folder.fd is not None and dst_folder.fd is not None:
        if _renameat2 is not None:
            rc = _renameat2(src_folder.fd, os.fsencode(src), dst_folder.fd, os.fsencode(dst), _RENAME_NOREPLACE)
            if rc == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise OSError(err, os.strerror(err), dst)
        try:
            os.link(src, dst, src_dir_fd=src_folder.fd, dst_dir_fd=dst_folder.fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        else:
            os.unlink(src, dir_fd=src_folder.fd)
            return
    if dst_folder.exists(dst):
        raise FileExistsError(errno.EEXIST, "File exists", dst)
    if src_folder.fd is None or dst_folder.fd is None:
        os.rename(src_folder._p(src), dst_folder._p(dst))
    else:
        os.rename(src, dst, src_dir_fd=src_folder.fd, dst_dir_fd=dst_folder.fd)


def split_rel(rel: str) -> Tuple[List[str], str]:
    """A relative path ('/' separators) as (its folders from the root, its name)."""
    parts = rel.split("/")
    return parts[:-1], parts[-1]

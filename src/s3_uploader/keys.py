"""From a local path to its place in the bucket: which files count, and the S3 key each one gets.

Pure functions and small value objects; no I/O but ``socket.gethostname`` at construction.
"""
from __future__ import annotations

import fnmatch
import os
import re
import socket
import time
from typing import Optional, Sequence

MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length


class Filters:
    """Decides which relative paths are candidates, from include/exclude/skip_hidden.

    Patterns are shell wildcards matched against the whole '/'-separated relative path, where ``*``
    also crosses ``/`` (so ``*.mp4`` matches in every folder). Exclude wins over include; an empty
    include means every file. Matching ignores case on Windows, as its filesystems do.
    """

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = (), skip_hidden: bool = True):
        flags = re.IGNORECASE if os.name == "nt" else 0
        self._include = _compile(include, flags)
        self._exclude = _compile(exclude, flags)
        self.skip_hidden = skip_hidden

    def dir_allowed(self, name: str) -> bool:
        """Whether to descend into a folder called ``name`` (hidden folders are pruned whole)."""
        return not (self.skip_hidden and name.startswith("."))

    def name_allowed(self, name: str, rel: str) -> bool:
        """``file_allowed`` for a file whose folders are already known not to be hidden."""
        if self.skip_hidden and name[:1] == ".":
            return False
        if self._exclude is not None and self._exclude.match(rel):
            return False
        return self._include is None or bool(self._include.match(rel))

    def file_allowed(self, rel: str) -> bool:
        """Whether the file at relative path ``rel`` is a candidate for upload."""
        folders, _, name = rel.rpartition("/")
        if self.skip_hidden and folders and any(part.startswith(".") for part in folders.split("/")):
            return False
        return self.name_allowed(name, rel)


def _compile(patterns: Sequence[str], flags: int) -> Optional["re.Pattern[str]"]:
    if not patterns:
        return None
    # fnmatch.translate already lets '*' match '/', which is the documented behaviour.
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), flags | re.DOTALL)


# What a name's characters become in its key. Every character not listed here is kept as it is,
# so a name made only of ordinary characters (letters in any script, digits, spaces, punctuation)
# is its own key and existing users' keys do not move. Escaped as %XX (each byte, upper-case hex):
#
# - ``%`` followed by two hex digits (``a%FF.dat`` -> ``a%25FF.dat``): otherwise it would read as an
#   escape. A ``%`` that is not (``100%.txt``) cannot, and stays.
# - ``\``: SeaweedFS (and other servers built on a file system) turn it into ``/``, so ``x\y.txt``
#   and the file ``y.txt`` in folder ``x`` would be one object.
# - control characters U+0000-U+001F and U+007F: XML 1.0 cannot carry most of them, so a listing
#   (cleanup's proof) shows them only when the server url-encodes it, and some clients and servers
#   strip or refuse them.
# - bytes that are not UTF-8 (on POSIX, Python carries them as surrogate escapes U+DC80-U+DCFF;
#   on Windows, lone surrogates): a key is UTF-8 text.
#
# Not escaped, and why: ``/`` is the separator of the relative path, as it is of keys. Empty, ``.``
# and ``..`` segments, ``//`` and a trailing ``/`` (which servers collapse, refuse or treat as a
# folder) cannot come from a file's relative path, and a prefix holding them is a config error.
# Leading and trailing spaces, case and Unicode normalization (NFC vs NFD) are kept byte for byte
# by AWS, SeaweedFS and ``rclone serve s3`` on Linux (checked against both local servers); a server
# that folds case or normalizes (one backed by a case-insensitive or normalizing file system) can
# merge names that differ only so, which no escape of ours could prevent without moving the keys
# of ordinary names.
_ESCAPE = re.compile(r"%(?=[0-9A-Fa-f]{2})|[\x00-\x1f\x7f\\\ud800-\udfff]")
_ESCAPED = re.compile(r"%([0-9A-Fa-f]{2})")


def _percent(m: "re.Match[str]") -> str:
    # os.fsencode gives a surrogate escape back its original byte (POSIX) or a lone surrogate its
    # UTF-8 form (Windows); the others are ASCII
    return "".join("%%%02X" % b for b in os.fsencode(m.group()))


def escape_name(rel: str) -> str:
    """A relative path as the name part of its S3 key: injective and reversible (:func:`unescape_name`).

    The name is ``rel`` with each character the comment above lists written as ``%XX`` per byte of
    the file system's own encoding of it; every other character is kept. A name with none of them
    (the usual case) is returned as it is.
    """
    if _ESCAPE.search(rel) is None:
        return rel
    return _ESCAPE.sub(_percent, rel)


def unescape_name(name: str) -> str:
    """The relative path whose :func:`escape_name` is ``name``: each ``%XX`` (two hex digits) is
    the byte XX, every other character its UTF-8 bytes, and the bytes are the file system's name
    (``os.fsdecode``). ``unescape_name(escape_name(rel)) == rel`` for every relative path."""
    if "%" not in name:
        return name
    out = bytearray()
    pos = 0
    for m in _ESCAPED.finditer(name):
        out += name[pos:m.start()].encode("utf-8")
        out.append(int(m.group(1), 16))
        pos = m.end()
    out += name[pos:].encode("utf-8")
    return os.fsdecode(bytes(out))


class KeyMaker:
    """Maps a relative path (and its mtime) to an S3 key: ``prefix + '/' + rel``.

    The prefix may hold ``{hostname}`` and, from the file's mtime in local time, ``{yyyy}``, ``{mm}``,
    ``{dd}``. The key is decided once per file and stored, so later passes use the stored key.
    """

    def __init__(self, prefix_template: str, hostname: Optional[str] = None):
        self.template = prefix_template.strip("/")
        self.hostname = hostname or socket.gethostname().split(".")[0]

    def key_for(self, rel: str, mtime: float) -> str:
        name = escape_name(rel)
        if not self.template:
            return name
        if "{" in self.template:
            year, month, day = local_date(mtime)
            prefix = self.template.format(hostname=self.hostname, yyyy=f"{year:04d}", mm=f"{month:02d}",
                                          dd=f"{day:02d}").strip("/")
        else:
            prefix = self.template
        return f"{prefix}/{name}" if prefix else name

    @property
    def static_prefix(self) -> str:
        """The part of the prefix before any placeholder: every key of ours starts with it."""
        head = self.template.split("{", 1)[0]
        return head


def local_date(mtime: float) -> "tuple[int, int, int]":
    """(year, month, day) of ``mtime`` in local time; a time the platform cannot represent (a camera
    with no clock, a corrupt timestamp: tmpfs and btrfs store any) gives the nearest date that
    exists, 9999-12-31 or 1970-01-01, so one file's mtime never stops a scan."""
    try:
        t = time.localtime(mtime)
        return t.tm_year, t.tm_mon, t.tm_mday
    except (OverflowError, OSError, ValueError):
        return (9999, 12, 31) if mtime > 0 else (1970, 1, 1)


def key_problem(key: str) -> Optional[str]:
    """Why S3 cannot take ``key``, or None when it can."""
    n = len(key.encode("utf-8"))
    if n > MAX_KEY_BYTES:
        return f"S3 key is {n} bytes long, over S3's limit of {MAX_KEY_BYTES}"
    if not key:
        return "S3 key would be empty"
    return None


def key_folder(key: str) -> str:
    """The folder part of a key including its trailing '/' ('' for a key at the bucket root)."""
    i = key.rfind("/")
    return key[: i + 1] if i >= 0 else ""

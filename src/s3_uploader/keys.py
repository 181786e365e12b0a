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
        if self.skip_hidden and any(part.startswith(".") for part in rel.split("/")):
            return False
        if self._exclude is not None and self._exclude.match(rel):
            return False
        return self._include is None or bool(self._include.match(rel))


def _compile(patterns: Sequence[str], flags: int) -> Optional["re.Pattern[str]"]:
    if not patterns:
        return None
    # fnmatch.translate already lets '*' match '/', which is the documented behaviour.
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), flags | re.DOTALL)


def escape_name(rel: str) -> str:
    """A relative path as a valid UTF-8 S3 key part.

    Names that are valid UTF-8 are returned unchanged. A name that is not (on POSIX, Python carries
    its undecodable bytes as surrogate escapes) is written with every such byte as ``%XX`` and every
    ``%`` as ``%25``, so percent-decoding the key gives back the exact original bytes.
    """
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        pass
    out = []
    for ch in rel:
        if "\udc80" <= ch <= "\udcff":
            out.append("%%%02X" % (ord(ch) - 0xDC00))
        elif ch == "%":
            out.append("%25")
        else:
            out.append(ch)
    return "".join(out)


def is_escaped_name(rel: str) -> bool:
    return escape_name(rel) != rel


class KeyMaker:
    """Maps a relative path (and its mtime) to an S3 key: ``prefix + '/' + rel``.

    The prefix may hold ``{hostname}`` and, from the file's mtime in local time, ``{yyyy}``, ``{mm}``,
    ``{dd}``. The key is decided once per file and stored, so later passes use the stored key.
    """

    def __init__(self, prefix_template: str, hostname: Optional[str] = None):
        self.template = prefix_template.strip("/")
        self.hostname = hostname or socket.gethostname().split(".")[0]
        self.dated = any(p in self.template for p in ("{yyyy}", "{mm}", "{dd}"))

    def key_for(self, rel: str, mtime: float) -> str:
        name = escape_name(rel)
        if not self.template:
            return name
        if "{" in self.template:
            t = time.localtime(mtime)
            prefix = self.template.format(hostname=self.hostname, yyyy=f"{t.tm_year:04d}", mm=f"{t.tm_mon:02d}",
                                          dd=f"{t.tm_mday:02d}").strip("/")
        else:
            prefix = self.template
        return f"{prefix}/{name}" if prefix else name

    @property
    def static_prefix(self) -> str:
        """The part of the prefix before any placeholder: every key of ours starts with it."""
        head = self.template.split("{", 1)[0]
        return head


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

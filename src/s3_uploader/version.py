"""Pure rules every stage shares about a file's version and place, written once.

A file's *version* is its (size, mtime in ns, inode): the scanner records it, the scheduler compares
it before building a job, the uploader re-checks it around the read, the store decides a new key by
it, and cleanup proves it before removing a file. Each of them asks these functions, so "changed
since" means the same thing at every stage.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

REMOVED_STATES = ("deleted", "archived")  # the local file was removed by cleanup
_IN_FLIGHT_STATES = ("pending", "uploading")  # on its way: the upload's own checks handle a change
_NS_MAX = 2 ** 63 - 1


class Signature(NamedTuple):
    """(size, mtime_ns, inode): equal to the plain tuple rows and stats already carry."""

    size: int
    mtime_ns: int
    inode: int


def mtime_ns_of(st: os.stat_result) -> int:
    """A stat result's mtime in ns, held within SQLite's 64-bit integers (tmpfs and btrfs store a time
    past the year 2262; ext4 clamps it). Every stage takes a file's mtime through this one rule, so
    the version found, the version read and the version recorded compare equal."""
    return max(-_NS_MAX - 1, min(st.st_mtime_ns, _NS_MAX))


def signature_of(st: os.stat_result) -> Signature:
    """The version of the file ``st`` describes, as every stage compares it."""
    return Signature(st.st_size, mtime_ns_of(st), st.st_ino)


def settled(state: Optional[str], recorded: Optional[tuple], seen: tuple) -> bool:
    """True when a row already accounts for the version ``seen``: nothing to discover again.

    That is a row in state uploaded, failed or parked (its retry scheduled) with the same version. A
    missing row, another version, or a file at the path of a removed (deleted/archived) row is new.
    A pending or uploading row is on its way, so it is not settled: its job is (re)built, and the
    upload's own re-check catches a change.
    """
    return (state is not None and recorded == seen and state not in _IN_FLIGHT_STATES
            and state not in REMOVED_STATES)


def is_new_version(state: str, recorded: tuple, seen: tuple) -> bool:
    """True when ``seen`` must be uploaded as a version of its own (its own key, from its mtime):
    its version differs from the row's, or the row's file was removed and this is a new one there."""
    return recorded != seen or state in REMOVED_STATES


def safe_rel(rel: str) -> bool:
    """A relative path that names something below the root: no '..', no '.', no empty or absolute
    part, and no native separator other than '/'. Nothing outside the watched tree is ever named."""
    return (bool(rel) and not os.path.isabs(rel) and (os.sep == "/" or os.sep not in rel)
            and all(p not in ("", ".", "..") for p in rel.split("/")))


def is_inside(real: str, real_root: str) -> bool:
    """True when the resolved path ``real`` is ``real_root`` or lies below it (both already resolved
    with ``os.path.realpath``): the one test of "inside the watched tree"."""
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)

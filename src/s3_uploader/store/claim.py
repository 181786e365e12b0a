"""One daemon per state database: :class:`DatabaseClaim`, a lock the operating system drops when
the process ends."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Union

from .database import StoreError


class DatabaseClaim:
    """One daemon (``run`` or ``once``) per state database at a time, held by a lock on the file
    ``<db_path>.lock`` (flock; an exclusive byte lock on Windows) that the operating system drops
    when the process ends, ``kill -9`` included. Two daemons on one database would each act on
    rows the other is moving (a manual ``once`` finishing a running pass's cleanup, say), so the
    second is refused with one line naming the first one's pid. ``status`` and ``check`` read
    without it."""

    def __init__(self, db_path: Union[str, os.PathLike]):
        self.path = Path(str(db_path) + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a+")
        except OSError as exc:
            raise StoreError(f"State database lock {self.path} cannot be opened: {exc.strerror or exc}") from None
        try:
            if sys.platform == "win32":  # not os.name == "nt": the same test, but one mypy's --platform follows
                import msvcrt
                self._file.seek(0)
                msvcrt.locking(self._file.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                self._file.seek(0)
                holder = self._file.read().strip() or "?"
            except OSError:  # Windows: the holder's locked byte cannot be read
                holder = "?"
            self._file.close()
            raise StoreError(f"State database {db_path} is in use by another s3-uploader (pid {holder}); one "
                             f"process per database: stop that one, or give this one its own db_path") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # the lock goes with the descriptor

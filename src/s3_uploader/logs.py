"""Logging: timestamped human lines (or one JSON object per line), to stderr and a rotating file.

With ``log_file`` empty everything goes to stderr (journald picks it up under systemd). With a
``log_file``, lines go to that file, rotated by size, and warnings and errors still reach stderr so a
person at the terminal or in the journal sees what needs them. Secrets are never logged: nothing
here or elsewhere formats credentials.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
from typing import Any, Optional, Tuple

ROOT = "s3_uploader"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, logger, msg, and exc when present."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {c: ("\\n" if c == 10 else "\\r" if c == 13 else "\\t" if c == 9 else f"\\x{c:02x}")
            for c in list(range(32)) + [127]}


class TextFormatter(logging.Formatter):
    """``YYYY-MM-DD HH:MM:SS LEVEL message``. The timestamp text is made once per second, not per
    line: a busy uploader writes three lines per file and strftime was a third of their cost."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")
        self._stamp: Tuple[int, str] = (-1, "")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # one record, one line: a file name holding a newline must not forge a second log line
        if _CONTROL.search(record.message):
            record.message = record.message.translate(_ESCAPES)
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        second = int(record.created)
        stamp = self._stamp  # one tuple read: safe without a lock across handler threads
        if stamp[0] != second:
            stamp = (second, time.strftime(self.datefmt or "%Y-%m-%d %H:%M:%S", self.converter(second)))
            self._stamp = stamp
        return stamp[1]


def text_formatter() -> logging.Formatter:
    return TextFormatter()


def setup(level: str = "INFO", fmt: str = "text", log_file: str = "", max_bytes: int = 10 * 1024 * 1024,
          backups: int = 5, stream: Any = None) -> logging.Logger:
    """(Re)configure the package logger; returns it. Safe to call again (handlers are replaced)."""
    # Our formatters never show the caller's file/line, thread or process: skip collecting them
    # for every record (the logging HOWTO's "Optimization" knobs).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    formatter = JsonFormatter() if fmt == "json" else text_formatter()
    err = logging.StreamHandler(stream or sys.stderr)
    err.setFormatter(formatter)
    if log_file:
        fh: logging.Handler
        if max_bytes > 0:
            fh = logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backups,
                                                      encoding="utf-8", delay=True)
        else:
            fh = logging.FileHandler(log_file, encoding="utf-8", delay=True)
        fh.setFormatter(formatter)
        logger.addHandler(fh)
        err.setLevel(logging.WARNING)
    logger.addHandler(err)
    logger.setLevel(getattr(logging, level))
    logger.propagate = False
    return logger


def set_level(level: str) -> None:
    logging.getLogger(ROOT).setLevel(getattr(logging, level))


def set_format(fmt: str) -> None:
    formatter = JsonFormatter() if fmt == "json" else text_formatter()
    for h in logging.getLogger(ROOT).handlers:
        h.setFormatter(formatter)


def get(name: Optional[str] = None) -> logging.Logger:
    return logging.getLogger(f"{ROOT}.{name}" if name else ROOT)

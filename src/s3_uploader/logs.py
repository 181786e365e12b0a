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
import traceback
from typing import Any, Callable, List, Optional, Tuple

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

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)  # a traceback follows the line: the general path
        # the same line as the general path (asctime, level, message), without its generic steps
        record.message = record.getMessage()
        return self.line(record.created, record.levelname, record.message)

    def line(self, created: float, levelname: str, message: str) -> str:
        """The line for a message without a traceback (also used by :func:`per_file`)."""
        if _CONTROL.search(message):
            message = message.translate(_ESCAPES)
        return f"{self._time_text(created)} {levelname:<7} {message}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        # one record, one line: a file name holding a newline must not forge a second log line
        if _CONTROL.search(record.message):
            record.message = record.message.translate(_ESCAPES)
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        return self._time_text(record.created)

    def _time_text(self, created: float) -> str:
        second = int(created)
        stamp = self._stamp  # one tuple read: safe without a lock across handler threads
        if stamp[0] != second:
            stamp = (second, time.strftime(self.datefmt or "%Y-%m-%d %H:%M:%S", self.converter(second)))
            self._stamp = stamp
        return stamp[1]


def text_formatter() -> logging.Formatter:
    return TextFormatter()


# INFO lines wait at most this long to be written (a busy uploader writes three lines per file).
FLUSH_SECONDS = 0.25


class _Batching(logging.Handler):
    """Batched writes for a logging handler: INFO and DEBUG lines go out in batches, one write per
    batch instead of one per line (a third of a small file's logging cost). A batch is written when
    a WARNING or worse arrives (after the lines before it, so order is kept), when it is older than
    :data:`FLUSH_SECONDS` at the next line or at :func:`flush_pending` (the daemon calls it twice a
    second), when it reaches 256 lines, and at exit. A ``kill -9`` can lose the last quarter second
    of INFO lines; never a warning or an error."""

    lock: Any  # set by Handler.__init__ (typed Optional: createLock may not have run)
    terminator: str  # each handler class below: StreamHandler's
    _pending: List[str]
    _since: float = 0.0
    _write_batch: Callable[[List[str]], None]  # each handler class below: write these lines out

    def handle(self, record: logging.LogRecord) -> Any:
        # logging.Handler.handle holds the handler's lock around emit(), formatting included; the
        # threads that log per file would queue on it. Here only the append is under the lock.
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may hand back another record
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.append(msg, record.levelno)

    def append(self, line: str, levelno: int) -> None:
        """Queue one formatted line; a warning or worse, a full batch or an old one is written now."""
        with self.lock:
            if not self._pending:
                self._since = time.monotonic()
            self._pending.append(line)
            if (levelno >= logging.WARNING or len(self._pending) >= 256
                    or time.monotonic() - self._since >= FLUSH_SECONDS):
                self._flush_locked()

    def flush(self) -> None:
        with self.lock:
            self._flush_locked()

    def flush_if_due(self) -> None:
        with self.lock:
            if self._pending and time.monotonic() - self._since >= FLUSH_SECONDS:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self._write_batch(lines)
        except Exception:  # as logging's own handlers: a broken stream never stops the daemon
            traceback.print_exc(file=sys.__stderr__)


class BatchingStreamHandler(_Batching, logging.StreamHandler):
    """A StreamHandler (stderr) with batched writes."""

    def __init__(self, stream: Any = None) -> None:
        logging.StreamHandler.__init__(self, stream)
        self._pending = []

    def _write_batch(self, lines: List[str]) -> None:
        self.stream.write(self.terminator.join(lines) + self.terminator)
        self.stream.flush()


class BatchingFileHandler(_Batching, logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler with batched writes (the size limit is checked per batch; 0 = never
    rotated)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        logging.handlers.RotatingFileHandler.__init__(self, *a, **kw)
        self._pending = []

    def _write_batch(self, lines: List[str]) -> None:
        if self.stream is None:
            self.stream = self._open()
        if self.maxBytes <= 0:
            self.stream.write(self.terminator.join(lines) + self.terminator)
            self.stream.flush()
            return
        # as RotatingFileHandler, a file never grows past maxBytes: the batch is split where it must
        size = self.stream.tell()
        chunk: List[str] = []
        for line in lines:
            n = len((line + self.terminator).encode("utf-8", "replace"))
            if size > 0 and size + n >= self.maxBytes:
                if chunk:
                    self.stream.write("".join(chunk))
                    chunk = []
                self.doRollover()
                if self.stream is None:  # delay=True: reopened by us
                    self.stream = self._open()
                size = 0
            chunk.append(line + self.terminator)
            size += n
        self.stream.write("".join(chunk))
        self.stream.flush()

    def close(self) -> None:
        self.flush()
        super().close()


def per_file(logger: logging.Logger, msg: str, *args: Any) -> None:
    """``logger.info(msg, *args)`` for the lines logged for every file (three per upload).

    With the handlers :func:`setup` installs in text format, and nothing added to them or to
    ``logger`` since (no other handler, filter or formatter), the same line goes to the same handlers
    without a LogRecord and the walk through logging's generic steps: measured, those three lines
    were 9% of the client's CPU per small file. Anything else takes ``logger.info`` itself.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    root = logger.parent
    if (root is None or root.name != ROOT or logger.handlers or logger.filters or not logger.propagate
            or root.filters):
        logger.info(msg, *args)
        return
    batching: List[Tuple[_Batching, TextFormatter]] = []
    for h in root.handlers:
        fmt = h.formatter
        if not isinstance(h, _Batching) or h.filters or type(fmt) is not TextFormatter:
            logger.info(msg, *args)
            return
        batching.append((h, fmt))
    message = msg % args if args else msg
    now = time.time()
    for b, fmt in batching:
        if b.level <= logging.INFO:
            b.append(fmt.line(now, "INFO", message), logging.INFO)


def flush() -> None:
    """Write out every batched line now."""
    for h in logging.getLogger(ROOT).handlers:
        h.flush()


def flush_pending() -> None:
    """Write out batched lines older than :data:`FLUSH_SECONDS` (the daemon's tick calls this)."""
    for h in logging.getLogger(ROOT).handlers:
        f = getattr(h, "flush_if_due", None)
        if f is not None:
            f()


def setup(level: str = "INFO", fmt: str = "text", log_file: str = "", max_bytes: int = 10 * 1024 * 1024,
          backups: int = 5, stream: Any = None) -> logging.Logger:
    """(Re)configure the package logger; returns it. Safe to call again (handlers are replaced)."""
    # Our formatters never show the caller's file/line, thread or process: skip collecting them
    # for every record (the logging HOWTO's "Optimization" knobs).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    formatter = JsonFormatter() if fmt == "json" else text_formatter()
    err = BatchingStreamHandler(stream or sys.stderr)
    err.setFormatter(formatter)
    if log_file:
        fh = BatchingFileHandler(log_file, maxBytes=max(0, max_bytes), backupCount=backups, encoding="utf-8",
                                 delay=True)
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

"""The value types of the config table: each parses one INI value or says what it expected.

A type is a :class:`ValueType`: a callable ``parse(text) -> value`` that raises ValueError with a phrase
saying what was expected (config.py puts it into the error naming the section, key and value), the
short ``describe`` phrase for the example file and the reference, and the Python type of the value.
``parse_duration``, ``parse_size`` and the other parsers are also used on their own (bench, bandwidth).
"""
from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Tuple

from . import objects

_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``30s``, ``5m``, ``2h``, ``7d`` or ``1w``; raises ValueError."""
    m = _NUMBER_UNIT.match(text)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _DURATION_UNITS:
        raise ValueError("a duration: seconds, or a number with s, m, h, d or w (e.g. 30s, 5m, 7d)")
    return float(m.group(1)) * _DURATION_UNITS[unit]


def parse_size(text: str) -> int:
    """Bytes from ``1048576``, ``64MB`` (10^6) or ``8MiB`` (2^20); raises ValueError."""
    m = _NUMBER_UNIT.match(text)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise ValueError("a size: bytes, or a number with KB, MB, GB, TB (10^3) or KiB, MiB, GiB, TiB (2^10)")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class FreeSpace:
    """A free-space floor: an absolute byte count, or a percentage of the filesystem's size."""

    bytes: int = 0
    percent: float = 0.0

    def floor_bytes(self, total_bytes: int) -> int:
        """The floor in bytes on a filesystem of ``total_bytes``."""
        return self.bytes if not self.percent else int(total_bytes * self.percent / 100.0)

    def __bool__(self) -> bool:
        return bool(self.bytes or self.percent)


def parse_free_space(text: str) -> FreeSpace:
    """A FreeSpace from a size (``20GiB``) or a percentage below 100 (``10%``); raises ValueError."""
    t = text.strip()
    if t.endswith("%"):
        try:
            pct = float(t[:-1])
        except ValueError:
            pct = -1.0
        if not 0 <= pct < 100:
            raise ValueError("a size (e.g. 20GiB) or a percentage from 0 to 99 (e.g. 10%)")
        return FreeSpace(percent=pct)
    try:
        return FreeSpace(bytes=parse_size(t))
    except ValueError:
        raise ValueError("a size (e.g. 20GiB) or a percentage from 0 to 99 (e.g. 10%)") from None


def parse_bool(text: str) -> bool:
    """True from 1/true/yes/on, False from 0/false/no/off (any case); raises ValueError."""
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def parse_patterns(text: str) -> Tuple[str, ...]:
    """Comma-separated shell wildcards; ``*`` also crosses ``/``. Empty items are dropped."""
    pats = tuple(p.strip().replace("\\", "/") for p in text.split(",") if p.strip())
    for p in pats:
        try:
            re.compile(fnmatch.translate(p))
        except re.error:
            raise ValueError(f"comma-separated shell wildcards (bad pattern {p!r})") from None
    return pats


def parse_address(text: str) -> Tuple[str, int]:
    """``PORT``, ``:PORT`` or ``HOST:PORT``; a bare port binds 127.0.0.1 only."""
    t = text.strip()
    host, _, port = t.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("PORT, :PORT or HOST:PORT (e.g. 127.0.0.1:9101)")
    return host, int(port)


@dataclass(frozen=True)
class ScheduleEntry:
    """One entry of a bandwidth timetable: from this minute of the day on, this limit."""

    minute_of_day: int
    limit: Optional[int]  # bytes per second, None = unlimited


def parse_schedule(text: str) -> Tuple[ScheduleEntry, ...]:
    """An rclone-style timetable: ``08:00,512KiB 19:00,off``; each entry holds until the next one."""
    out = []
    expected = "a timetable of HH:MM,RATE entries separated by spaces (e.g. 08:00,512KiB 19:00,off)"
    for item in text.split():
        when, sep, rate = item.partition(",")
        m = re.match(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$", when)
        if not sep or not m:
            raise ValueError(expected)
        limit: Optional[int]
        if rate.strip().lower() in ("off", "unlimited", "0"):
            limit = None
        else:
            try:
                limit = parse_size(rate)
            except ValueError:
                raise ValueError(expected) from None
        out.append(ScheduleEntry(int(m.group(1)) * 60 + int(m.group(2)), limit))
    out.sort(key=lambda e: e.minute_of_day)
    return tuple(out)


class ValueType:
    """A named parser with the phrase that says what it expects (for errors and the example).

    ``pytype`` is the Python type of the parsed value, as config.py's section classes annotate it
    (a unit test checks each field against it, so the table and the classes cannot drift).
    """

    def __init__(self, name: str, parse: Callable[[str], Any], describe: str, pytype: Any):
        self.name, self.parse, self.describe, self.pytype = name, parse, describe, pytype


def int_type(minimum: int, maximum: Optional[int] = None) -> ValueType:
    """Whole numbers from ``minimum`` to ``maximum`` (None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            v = int(text.strip())
        except ValueError:
            v = None
        if v is None or v < minimum or (maximum is not None and v > maximum):
            hi = f" to {maximum}" if maximum is not None else " or more"
            raise ValueError(f"a whole number, {minimum}{hi}")
        return v
    return ValueType("int", parse, "whole number", int)


def auto_int_type(minimum: int, maximum: int) -> ValueType:
    """``auto`` (any case; the value None: the daemon decides) or a whole number from ``minimum``
    to ``maximum``."""
    def parse(text: str) -> Optional[int]:
        t = text.strip()
        if t.lower() == "auto":
            return None
        try:
            v = int(t)
        except ValueError:
            v = None
        if v is None or not minimum <= v <= maximum:
            raise ValueError(f"auto, or a whole number {minimum} to {maximum}")
        return v
    return ValueType("int", parse, "auto or whole number", Optional[int])


def choice_type(*values: str, case: bool = False) -> ValueType:
    """One of ``values``, compared ignoring case unless ``case``; the value is returned as listed."""
    def parse(text: str) -> str:
        t = text.strip()
        for v in values:
            if (t == v) if case else (t.lower() == v.lower()):
                return v
        raise ValueError("one of " + ", ".join(repr(v) if v else "(empty)" for v in values))
    return ValueType("choice", parse, "one of " + ", ".join(v or "(empty)" for v in values), Literal[values])


def duration_type(minimum: float = 0.0) -> ValueType:
    """Durations (see parse_duration) of at least ``minimum`` seconds."""
    return _at_least("duration", parse_duration, float, minimum, f"a duration of at least {minimum:g}s")


def size_type(minimum: int = 0) -> ValueType:
    """Sizes (see parse_size) of at least ``minimum`` bytes."""
    return _at_least("size", parse_size, int, minimum, f"a size of at least {minimum} bytes")


def _at_least(name: str, parse_value: Callable[[str], Any], pytype: Any, minimum: float, expected: str) -> ValueType:
    """The values ``parse_value`` reads that are at least ``minimum``; ``expected`` says so when one is not."""
    def parse(text: str) -> Any:
        v = parse_value(text)
        if v < minimum:
            raise ValueError(expected)
        return v
    return ValueType(name, parse, name, pytype)


def parse_command(text: str) -> str:
    """A command line as written (stripped); raises ValueError when it cannot be split as a shell
    would (an unclosed quote). Run without a shell: see :mod:`s3_uploader.hooks`."""
    try:
        shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"a command line split as a shell would ({exc})") from None
    return text.strip()


STR = ValueType("str", lambda t: t.strip(), "text", str)
COMMAND = ValueType("str", parse_command, "command line", str)


def parse_http_url(text: str) -> str:
    """An http:// or https:// URL, or empty (off); raises ValueError."""
    t = text.strip()
    if t and not re.match(r"^https?://[^/\s]+(/\S*)?$", t):
        raise ValueError("an http:// or https:// URL")
    return t


def parse_presign_ttl(text: str) -> float:
    """A duration of at most 7 days, S3's longest presigned URL; raises ValueError."""
    v = parse_duration(text)
    if v > 7 * 86400:
        raise ValueError("a duration of at most 7d (S3's longest presigned URL)")
    return v


HTTP_URL = ValueType("str", parse_http_url, "http(s) URL", str)
PRESIGN_TTL = ValueType("duration", parse_presign_ttl, "duration (at most 7d)", float)
PATH = ValueType("path", lambda t: t.strip(), "path", str)
BOOL = ValueType("bool", parse_bool, "true/false", bool)
PATTERNS = ValueType("patterns", parse_patterns, "comma-separated wildcards", Tuple[str, ...])
FREE_SPACE = ValueType("free_space", parse_free_space, "size or percentage", FreeSpace)
ADDRESS = ValueType("address", parse_address, "HOST:PORT", Optional[Tuple[str, int]])  # None: empty = off
SCHEDULE = ValueType("schedule", parse_schedule, "timetable", Tuple[ScheduleEntry, ...])

# What objects carry (objects.py parses and checks them; "pairs" parse an empty value themselves).
CONTENT_TYPES = ValueType("pairs", objects.parse_content_types, "comma-separated .ext=type",
                          Tuple[Tuple[str, str], ...])
METADATA = ValueType("pairs", objects.parse_metadata, "comma-separated name=value", Tuple[Tuple[str, str], ...])
TAGS = ValueType("pairs", objects.parse_tags, "comma-separated key=value", Tuple[Tuple[str, str], ...])
CHECKSUM = ValueType("choice", objects.parse_checksum, "one of " + ", ".join(objects.CHECKSUMS),
                     Literal["none", "crc64nvme", "crc32c", "sha256"])

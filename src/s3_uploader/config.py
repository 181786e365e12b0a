"""The configuration: one declarative table drives parsing, validation, reload and the example file.

Every option is a row of ``OPTIONS``: its section, key, type, default, whether a running daemon can
apply a change to it without a restart, and a one-line help. ``parse_config(text)`` turns INI text
into a :class:`Config` or raises :class:`ConfigError` listing *every* problem at once (section, key,
the bad value and what was expected); ``load_config(path)`` reads a file and resolves relative paths
against the file's folder; ``render_example()`` writes ``config.example.ini`` and ``render_reference()``
the reference ``docs/configuration.md`` from the same table. The value types the rows use (durations,
sizes, wildcards, timetables...) live in config_values.py, the rendering in config_docs.py.
"""
from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

from . import config_docs
from .config_checks import cross_checks
from .config_values import (ADDRESS, BOOL, CHECKSUM, COMMAND, CONTENT_TYPES, FREE_SPACE, HTTP_URL, METADATA, PATH,
                            PATTERNS, PRESIGN_TTL, SCHEDULE, STR, TAGS, FreeSpace, ScheduleEntry, ValueType)
# Re-exported: callers read these from config, where they were first.
from .config_values import parse_duration as parse_duration
from .config_values import parse_schedule as parse_schedule
from .config_values import parse_size as parse_size
# The table's short names for the parameterised types.
from .config_values import auto_int_type as _auto_int
from .config_values import choice_type as _choice
from .config_values import duration_type as _duration
from .config_values import int_type as _int
from .config_values import size_type as _size


class ConfigError(Exception):
    """Raised with every problem found in a configuration; ``errors`` holds one line per problem."""

    def __init__(self, errors: List[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


STORAGE_CLASSES = ("", "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                   "GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "OUTPOSTS", "SNOW", "EXPRESS_ONEZONE")


@dataclass(frozen=True)
class Option:
    """One row of the table: where it lives, how it is read, and whether it can change live."""

    section: str
    key: str
    type: ValueType
    default: str  # as written in the INI file; "" means empty/off
    help: str
    reloadable: bool = True
    required: bool = False
    example: Optional[str] = None  # a value shown (commented out) in config.example.ini


# The order here is the order of config.example.ini.
OPTIONS: Tuple[Option, ...] = (
    # --- what to watch ---------------------------------------------------------------------
    Option("watch", "directory_to_watch", PATH, "", "The folder whose files are uploaded (required). Its tree is "
           "walked recursively; nothing outside it is ever read.", reloadable=False, required=True,
           example="/var/lib/bi/New"),
    Option("watch", "include", PATTERNS, "", "Comma-separated wildcards matched against the path relative to "
           "directory_to_watch; '*' also crosses '/'. Empty = every file.",
           example="*.dat, *.bvr, *.avi, *.mov, *.jpg, *.mp4"),
    Option("watch", "exclude", PATTERNS, "", "Comma-separated wildcards for files never to upload "
           "(e.g. tmp/*, *.part). Exclude wins over include.", example="tmp/*, *.part, *.tmp"),
    Option("watch", "skip_hidden", BOOL, "true", "Skip names starting with '.', files and whole folders."),
    Option("watch", "follow_symlinks", BOOL, "false", "Follow symbolic links; even then nothing that resolves "
           "outside directory_to_watch is read."),
    Option("watch", "stable_seconds", _duration(0), "10s", "A file is uploaded only after its size, mtime and "
           "inode stayed the same this long (0 = as soon as found)."),
    Option("watch", "stable_checks", _int(1, 1000), "2", "...and over at least this many consecutive checks."),
    Option("watch", "scan_interval", _duration(0.1), "5m", "Rescan period: the guarantee behind filesystem "
           "events, which can be lost. Finds every file created, deleted or renamed: it stats each folder and "
           "lists those whose mtime changed (a full rescan, see full_scan_interval, costs ~0.6 s of CPU per "
           "100,000 files; a quick one ~0.05 s per 10,000 unchanged folders)."),
    Option("watch", "full_scan_interval", _duration(0), "6h", "Every this long a rescan lists every folder "
           "and stats every file; the rescans in between skip a folder whose own mtime is unchanged since a "
           "listing found all its files uploaded (adding, removing or renaming a file changes it; editing one in "
           "place does not: that is found by its event, or by the next full rescan). 0 = every rescan is full "
           "(e.g. where folder mtimes do not change: some FAT/exFAT drivers and network shares)."),
    Option("watch", "use_events", BOOL, "true", "Use filesystem events (inotify, ReadDirectoryChangesW) as "
           "hints that shorten the wait; false = rescans only (e.g. for network shares).", reloadable=False),
    # --- where it goes -------------------------------------------------------------------
    Option("s3", "bucket", STR, "", "The bucket to upload into (required).", reloadable=False, required=True,
           example="my-camera-archive"),
    Option("s3", "prefix", STR, "", "A folder inside the bucket: key = prefix/relative/path. Placeholders "
           "{hostname}, and from each file's mtime (local time) {yyyy}, {mm}, {dd}. Folders separated by single "
           "'/', none empty, '.' or '..'.", reloadable=False,
           example="{hostname}/{yyyy}-{mm}-{dd}"),
    Option("s3", "region", STR, "", "AWS region; empty = from the AWS config/environment (us-east-1 if none).",
           reloadable=False),
    Option("s3", "endpoint_url", STR, "", "Endpoint of an S3-compatible server (MinIO, SeaweedFS, Ceph, ...); "
           "empty = AWS.", reloadable=False, example="http://127.0.0.1:8333"),
    Option("s3", "profile", STR, "", "Named profile from the AWS shared config/credentials files; empty = the "
           "default credential chain (environment, files, instance role).", reloadable=False),
    Option("s3", "credentials_file", PATH, "", "A shared credentials file to read instead of "
           "~/.aws/credentials (same format); empty = the standard location.", reloadable=False),
    Option("s3", "addressing_style", _choice("auto", "path", "virtual"), "auto", "Bucket addressing: path "
           "style suits most S3-compatible servers.", reloadable=False),
    Option("s3", "ca_bundle", PATH, "", "PEM file of the CAs that the endpoint's TLS "
           "certificate must chain to, for every request (boto3 and obstore alike); empty = AWS_CA_BUNDLE, then "
           "ca_bundle in the AWS profile, then the system trust store.", reloadable=False,
           example="/etc/s3-uploader/private-ca.pem"),
    Option("s3", "transport", _choice("auto", "boto3", "obstore"), "auto", "How single PUTs are sent: obstore "
           "(Rust object_store, far less CPU per small file; Python >= 3.11) or boto3; auto = obstore when "
           "installed. Multipart, HEAD, list and delete always use boto3.", reloadable=False),
    Option("s3", "storage_class", _choice(*STORAGE_CLASSES, case=False), "", "Storage class for new uploads; "
           "empty = the bucket's default (STANDARD).", example="STANDARD_IA"),
    Option("s3", "sse", _choice("", "AES256", "aws:kms", "aws:kms:dsse"), "", "Server-side encryption for new "
           "uploads; empty = the bucket's default."),
    Option("s3", "sse_kms_key_id", STR, "", "KMS key id or ARN, with sse = aws:kms."),
    Option("s3", "content_types", CONTENT_TYPES, "", "Content-Type of new objects by the file's extension (any "
           "case): adds to or overrides the shipped table (.mp4 video/mp4, .mov video/quicktime, .avi, .mkv, .ts, "
           ".jpg, .png, .txt/.log text/plain, .csv, .json, .gz, .zip, .pdf, ...); other files are "
           "application/octet-stream.", example=".bvr=video/x-bvr, .dat=application/x-bi-dat"),
    Option("s3", "metadata", METADATA, "", "User metadata (x-amz-meta-*) on every new object, with the "
           "placeholder {hostname}; names of letters, digits, '-', '_', '.'; values printable ASCII; within "
           "S3's 2 KB. The file's mtime is always added as 'mtime' (rclone's name and format).",
           example="site={hostname}, camera-group=north"),
    Option("s3", "tags", TAGS, "", "Object tags on every new object (also on multipart uploads), with the "
           "placeholder {hostname}: at most 10; keys up to 128 and values up to 256 characters of letters, "
           "digits, spaces and + - = . _ : / @.", example="retention=evidence, site={hostname}"),
    Option("s3", "object_lock_mode", _choice("", "governance", "compliance"), "", "Object Lock retention "
           "for new objects (the bucket must have Object Lock; 'check' says): governance (removable with "
           "a special permission) or compliance (no one, not even root, until it expires). Needs "
           "object_lock_retain.", example="compliance"),
    Option("s3", "object_lock_retain", _duration(0), "", "With object_lock_mode: how long each object is "
           "locked, from its upload (retain-until = upload time + this).", example="30d"),
    Option("s3", "object_lock_legal_hold", BOOL, "false", "Put a legal hold on every new object (locked "
           "until the hold is removed; the bucket must have Object Lock)."),
    Option("s3", "checksum_algorithm", CHECKSUM, "none", "A full-object checksum computed from the bytes "
           "sent, which S3 verifies and stores with the object (composite per part for sha256 multipart). "
           "none: Content-MD5 alone proves each request, as on every S3-compatible server (AWS adds its own "
           "CRC64NVME anyway); crc64nvme and crc32c need the awscrt package.", example="crc64nvme"),
    # --- how it is sent ------------------------------------------------------------------
    Option("upload", "upload_workers", _auto_int(1, 512), "auto", "Files in flight at once. auto: small files' "
           "requests in flight follow the link, from 64 within 4-512: more while files/s or bytes/s grows with "
           "them, fewer on throttling (halved) or timeouts, their bodies under 128 MiB in all (a number pins "
           "it); 64 upload threads for large files. Small files are bound by round trips (files/s ~ in flight "
           "/ round-trip time), so this is far above the core count.", reloadable=False),
    Option("upload", "max_pending_uploads", _int(1), "10000", "Files held in memory at once (waiting to be "
           "stable or queued); bounds memory when a million files appear at once.", reloadable=False),
    Option("upload", "order", _choice("oldest", "newest"), "oldest", "Which waiting files go first, by "
           "modification time: oldest (a recorder that deletes its oldest files when its disk fills loses those "
           "first) or newest. Applies to the whole backlog; retries keep their own schedule."),
    Option("upload", "priority", PATTERNS, "", "Comma-separated wildcards (matched like include) of files sent "
           "before all others, an earlier pattern first; within each, by order. Empty = none.",
           example="*.jpg, cam1/*"),
    Option("upload", "max_retries", _int(0), "10", "Failed attempts before a file is parked (still shown by "
           "status, tried again after parked_retry_interval)."),
    Option("upload", "retry_backoff_base", _duration(0), "2s", "First retry delay; doubles per attempt, with "
           "jitter."),
    Option("upload", "retry_backoff_max", _duration(0), "5m", "Longest retry delay."),
    Option("upload", "parked_retry_interval", _duration(1), "1h", "How often parked files are tried again "
           "(also: s3-uploader retry)."),
    Option("upload", "multipart_threshold", _size(5 * 1024**2), "200MiB", "Files this size or larger are sent "
           "in parts (multipart upload, resumable across restarts); smaller ones in one streamed PUT, which costs "
           "less CPU. Lower it on a slow or flaky link, where resuming saves re-sending (parts are streamed from "
           "the file: no memory cost)."),
    Option("upload", "multipart_chunksize", _size(5 * 1024**2), "16MiB", "Part size for multipart uploads (grown "
           "automatically to keep under 10,000 parts)."),
    Option("upload", "max_concurrency", _int(1, 64), "4", "Parts of one multipart upload in flight at once."),
    Option("upload", "max_bandwidth", _size(0), "", "Upload rate limit in bytes per second (units allowed, "
           "e.g. 10MiB); empty or 0 = unlimited.", example="10MiB"),
    Option("upload", "bandwidth_schedule", SCHEDULE, "", "rclone-style timetable of limits, each from its time "
           "of day until the next entry; overrides max_bandwidth.", example="08:00,512KiB 19:00,off"),
    Option("upload", "max_bytes_per_day", _size(0), "", "Data budget: upload at most this many bytes (request "
           "bodies sent, re-sends included) per local calendar day, from midnight; when it is used, uploads pause "
           "(files stay pending) until the next day. A file larger than the whole budget is parked with an "
           "error. Empty or 0 = no limit.", example="2GiB"),
    Option("upload", "max_bytes_per_month", _size(0), "", "Data budget per local calendar month, from the 1st at "
           "midnight; as max_bytes_per_day (both apply when both are set). Empty or 0 = no limit.",
           example="50GiB"),
    Option("upload", "connect_timeout", _duration(0.1), "10s", "Timeout to connect to the endpoint.",
           reloadable=False),
    Option("upload", "read_timeout", _duration(0.1), "60s", "Timeout waiting for the endpoint to answer.",
           reloadable=False),
    # --- local cleanup -------------------------------------------------------------------
    Option("cleanup", "delete_after", _duration(0), "", "Delete the local copy this long after its upload was "
           "confirmed (and only once S3 shows the object again); empty or 0 = never.", example="7d"),
    Option("cleanup", "min_free_space", FREE_SPACE, "", "Keep at least this much free on the watched "
           "filesystem by deleting confirmed-uploaded files oldest first; bytes or a percentage.",
           example="10%"),
    Option("cleanup", "cleanup_interval", _duration(1), "5m", "How often a cleanup pass runs."),
    Option("cleanup", "cleanup_batch_size", _int(1), "1000", "Local candidates examined per pass at most."),
    Option("cleanup", "cleanup_prefix_batch_size", _int(1), "100", "Distinct S3 folders listed per pass at "
           "most (one ListObjectsV2 listing per folder)."),
    Option("cleanup", "remove_empty_dirs", BOOL, "true", "Remove folders emptied by cleanup (never "
           "directory_to_watch itself)."),
    Option("cleanup", "cleanup_dry_run", BOOL, "false", "Log what would be deleted; delete nothing."),
    Option("cleanup", "cleanup_action", _choice("delete", "archive"), "delete", "delete, or archive: move the "
           "file into archive_directory, keeping its relative path."),
    Option("cleanup", "archive_directory", PATH, "", "Where cleanup_action = archive moves files; must be "
           "outside directory_to_watch.", example="/srv/archive"),
    # --- the process ---------------------------------------------------------------------
    Option("daemon", "db_path", PATH, "s3-uploader.db", "The state database (SQLite). Relative paths are "
           "relative to this config file's folder.", reloadable=False),
    Option("daemon", "log_file", PATH, "", "Also log to this file (rotated); empty = stderr only.",
           reloadable=False),
    Option("daemon", "log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "Log level."),
    Option("daemon", "log_format", _choice("text", "json"), "text", "text: timestamped lines; json: one JSON "
           "object per line."),
    Option("daemon", "log_max_bytes", _size(0), "10MiB", "Rotate log_file at this size (0 = never).",
           reloadable=False),
    Option("daemon", "log_backup_count", _int(0), "5", "Rotated log files kept.", reloadable=False),
    Option("daemon", "metrics_address", ADDRESS, "", "Serve Prometheus /metrics, /healthz and the status "
           "page (/) here; a bare port binds 127.0.0.1. Empty = off.", reloadable=False, example="127.0.0.1:9101"),
    Option("daemon", "shutdown_timeout", _duration(0), "30s", "On SIGTERM, how long in-flight uploads may run "
           "before they are abandoned (multipart uploads resume at the next start; a single PUT is sent again). "
           "The whole stop takes at most this plus about 4 s; a second SIGTERM ends the drain at once."),
    Option("daemon", "forget_after", _duration(0), "30d", "Forget (drop from the state database) the rows of "
           "files deleted or archived by cleanup this long ago, or uploaded this long ago and deleted since by "
           "something else, so it does not grow for ever; checked hourly. "
           "A forgotten row no longer stops a file at another path from being uploaded over its key "
           "(only a changed prefix can map one there). 0 = keep every row."),
    # --- telling people: hooks and webhook (hooks.py; every key applies to the next event) ------
    Option("hooks", "on_uploaded", COMMAND, "", "Command run once per file uploaded (S3 holds it), without a shell "
           "(split as a shell would; /bin/sh -c '...' for one), given the event in S3U_* environment variables "
           "(see Hooks and webhooks in docs/operations.md). Empty = none.", example="/usr/local/bin/notify-clip"),
    Option("hooks", "on_parked", COMMAND, "", "Command run once per file parked (S3U_ERROR says why). Empty = none."),
    Option("hooks", "on_deleted", COMMAND, "", "Command run once per local copy removed by cleanup, deleted or "
           "archived (S3U_EVENT says which; S3U_PATH is the archived copy). Empty = none."),
    Option("hooks", "webhook_url", HTTP_URL, "", "POST one JSON object per event to this URL; a non-2xx answer or a "
           "timeout is retried; HTTPS trusts the CAs the S3 endpoint is trusted with. Empty = none.",
           example="https://example.net/hooks/s3"),
    Option("hooks", "presign_ttl", PRESIGN_TTL, "", "When set, S3U_URL and the webhook's url are a presigned GET URL "
           "of the object, valid this long from delivery (at most 7d, S3's maximum); empty = no URL.", example="7d"),
    Option("hooks", "hook_timeout", _duration(0.1), "30s", "A hook still running after this is killed (its process "
           "group), a webhook request abandoned: a failed attempt."),
    Option("hooks", "hook_max_attempts", _int(1), "20", "Attempts per event and target, with a backoff from 2s "
           "doubling up to 10m; then it is given up (one ERROR line and the given_up metric)."),
)

SECTIONS: Tuple[str, ...] = tuple(dict.fromkeys(o.section for o in OPTIONS))
_BY_KEY: Dict[Tuple[str, str], Option] = {(o.section, o.key): o for o in OPTIONS}


# --------------------------------------------------------------------------------------------
# One frozen class per section, one typed field per key, so that ``cfg.s3.bucket`` is a ``str`` to
# the type checker and a misspelled key fails the check rather than a user. The table above stays
# the single source: tests/unit/test_config.py checks that each class's fields are its section's
# keys, in order, with the table's types.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WatchSection:
    directory_to_watch: str
    include: Tuple[str, ...]
    exclude: Tuple[str, ...]
    skip_hidden: bool
    follow_symlinks: bool
    stable_seconds: float
    stable_checks: int
    scan_interval: float
    full_scan_interval: float
    use_events: bool


@dataclass(frozen=True)
class S3Section:
    bucket: str
    prefix: str
    region: str
    endpoint_url: str
    profile: str
    credentials_file: str
    addressing_style: Literal["auto", "path", "virtual"]
    ca_bundle: str
    transport: Literal["auto", "boto3", "obstore"]
    storage_class: Literal["", "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA",
                           "INTELLIGENT_TIERING", "GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "OUTPOSTS", "SNOW",
                           "EXPRESS_ONEZONE"]
    sse: Literal["", "AES256", "aws:kms", "aws:kms:dsse"]
    sse_kms_key_id: str
    content_types: Tuple[Tuple[str, str], ...]
    metadata: Tuple[Tuple[str, str], ...]
    tags: Tuple[Tuple[str, str], ...]
    object_lock_mode: Literal["", "governance", "compliance"]
    object_lock_retain: float
    object_lock_legal_hold: bool
    checksum_algorithm: Literal["none", "crc64nvme", "crc32c", "sha256"]


@dataclass(frozen=True)
class UploadSection:
    upload_workers: Optional[int]  # None = auto
    max_pending_uploads: int
    order: Literal["oldest", "newest"]
    priority: Tuple[str, ...]
    max_retries: int
    retry_backoff_base: float
    retry_backoff_max: float
    parked_retry_interval: float
    multipart_threshold: int
    multipart_chunksize: int
    max_concurrency: int
    max_bandwidth: int
    bandwidth_schedule: Tuple[ScheduleEntry, ...]
    max_bytes_per_day: int
    max_bytes_per_month: int
    connect_timeout: float
    read_timeout: float


@dataclass(frozen=True)
class CleanupSection:
    delete_after: float
    min_free_space: FreeSpace
    cleanup_interval: float
    cleanup_batch_size: int
    cleanup_prefix_batch_size: int
    remove_empty_dirs: bool
    cleanup_dry_run: bool
    cleanup_action: Literal["delete", "archive"]
    archive_directory: str


@dataclass(frozen=True)
class DaemonSection:
    db_path: str
    log_file: str
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    log_format: Literal["text", "json"]
    log_max_bytes: int
    log_backup_count: int
    metrics_address: Optional[Tuple[str, int]]
    shutdown_timeout: float
    forget_after: float


@dataclass(frozen=True)
class HooksSection:
    on_uploaded: str
    on_parked: str
    on_deleted: str
    webhook_url: str
    presign_ttl: float
    hook_timeout: float
    hook_max_attempts: int


class Config:
    """A parsed, validated configuration. Immutable: a reload builds a new one and swaps it."""

    watch: WatchSection
    s3: S3Section
    upload: UploadSection
    cleanup: CleanupSection
    daemon: DaemonSection
    hooks: HooksSection

    def __init__(self, values: Dict[Tuple[str, str], Any], source: Optional[Path] = None):
        self.values = dict(values)
        self.source = source
        self.watch = WatchSection(**self._section("watch"))
        self.s3 = S3Section(**self._section("s3"))
        self.upload = UploadSection(**self._section("upload"))
        self.cleanup = CleanupSection(**self._section("cleanup"))
        self.daemon = DaemonSection(**self._section("daemon"))
        self.hooks = HooksSection(**self._section("hooks"))

    def _section(self, name: str) -> Dict[str, Any]:
        return {k: v for (s, k), v in self.values.items() if s == name}

    @property
    def watch_root(self) -> Path:
        return Path(self.values[("watch", "directory_to_watch")])

    def differences(self, other: "Config") -> List[Option]:
        """The options whose value differs between this config and ``other``."""
        return [o for o in OPTIONS if self.values[(o.section, o.key)] != other.values[(o.section, o.key)]]


def _resolve(path_text: str, base: Optional[Path]) -> str:
    if not path_text:
        return ""
    p = Path(os.path.expanduser(path_text))
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p)


def parse_config(text: str, source: Optional[Path] = None) -> Config:
    """Parse INI text into a Config, or raise ConfigError naming every problem at once.

    Relative paths resolve against ``source``'s folder (the current folder when None).
    """
    errors: List[str] = []
    where = f"{source}: " if source else ""
    parser = configparser.ConfigParser(interpolation=None, empty_lines_in_values=False,
                                       inline_comment_prefixes=("#", ";"), strict=True)
    try:
        parser.read_string(text, source=str(source) if source else "<config>")
    except configparser.Error as exc:
        raise ConfigError([f"{where}cannot read the file as INI: {' '.join(str(exc).split())}"]) from None

    for sec in parser.sections():
        if sec not in SECTIONS:
            errors.append(f"{where}[{sec}]: unknown section (expected one of: {', '.join(SECTIONS)})")
            continue
        for key in parser[sec]:
            if (sec, key) not in _BY_KEY:
                close = [o.key for o in OPTIONS if o.section == sec]
                hint = _closest(key, close)
                errors.append(f"{where}[{sec}] {key}: unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))

    base = source.parent if source else Path.cwd()
    values: Dict[Tuple[str, str], Any] = {}
    for opt in OPTIONS:
        raw = parser.get(opt.section, opt.key, fallback=None) if parser.has_section(opt.section) else None
        text_value = opt.default if raw is None else raw
        if opt.required and not text_value.strip():
            errors.append(f"{where}[{opt.section}] {opt.key}: is required and missing (expected {opt.type.describe},"
                          f" e.g. {opt.example})")
            values[(opt.section, opt.key)] = None
            continue
        if not text_value.strip() and opt.type.name not in ("str", "path", "patterns", "choice", "pairs"):
            values[(opt.section, opt.key)] = _empty_value(opt)
            continue
        try:
            value = opt.type.parse(text_value)
        except ValueError as exc:
            errors.append(f"{where}[{opt.section}] {opt.key} = {text_value.strip()!r}: expected {exc}")
            values[(opt.section, opt.key)] = None
            continue
        if opt.type is PATH:
            value = _resolve(value, base)
        values[(opt.section, opt.key)] = value

    errors.extend(f"{where}{e}" for e in cross_checks(values))
    if errors:
        raise ConfigError(errors)
    return Config(values, source)


def _empty_value(opt: Option) -> Any:
    """What an option written with no value means: off for limits and timers, the default otherwise."""
    if opt.type.name in ("int", "bool"):
        return opt.type.parse(opt.default)
    return {"duration": 0.0, "size": 0, "free_space": FreeSpace(), "address": None, "schedule": ()}[opt.type.name]


def _closest(key: str, candidates: List[str]) -> Optional[str]:
    import difflib
    m = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return m[0] if m else None


def load_config(path: Union[str, os.PathLike]) -> Config:
    """Read and parse the file at ``path``; raise ConfigError (one line) when it cannot be read."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: config file not found (use --config PATH, or copy config.example.ini)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{p}: cannot read config file: {exc}"]) from None
    return parse_config(text, source=p.absolute())


def render_example() -> str:
    """The text of config.example.ini, from ``OPTIONS`` (see config_docs)."""
    return config_docs.render_example(OPTIONS)


def render_reference() -> str:
    """The text of docs/configuration.md, from ``OPTIONS`` (see config_docs)."""
    return config_docs.render_reference(OPTIONS)

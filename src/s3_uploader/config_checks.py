"""The configuration's rules that span several keys (one key's own rules are its value type's).

:func:`cross_checks` is run by :func:`~s3_uploader.config.parse_config` after every value is read,
and by :mod:`~s3_uploader.reload` on the merged values of a reload; each problem is one line naming
the section, the key, the value and what was expected.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterable, Tuple

from . import objects


def cross_checks(v: Dict[Tuple[str, str], Any]) -> Iterable[str]:
    """Rules that span several keys. Skipped where an input already failed on its own."""
    root = v.get(("watch", "directory_to_watch"))
    if v.get(("cleanup", "cleanup_action")) == "archive":
        arch = v.get(("cleanup", "archive_directory"))
        if not arch:
            yield "[cleanup] archive_directory: is required when cleanup_action = archive (expected a path)"
        elif root and _is_within(Path(arch), Path(root)):
            yield (f"[cleanup] archive_directory = {arch!r}: expected a folder outside directory_to_watch "
                   f"({root}), or archived files would be uploaded again")
    sse, kms = v.get(("s3", "sse")), v.get(("s3", "sse_kms_key_id"))
    if kms and sse not in ("aws:kms", "aws:kms:dsse", None):
        yield f"[s3] sse_kms_key_id = {kms!r}: expected only with sse = aws:kms or aws:kms:dsse"
    yield from objects.cross_checks(v)
    base, cap = v.get(("upload", "retry_backoff_base")), v.get(("upload", "retry_backoff_max"))
    if base is not None and cap is not None and cap < base:
        yield (f"[upload] retry_backoff_max = {cap:g}s: expected at least retry_backoff_base ({base:g}s)")
    prefix = v.get(("s3", "prefix"))
    if prefix:
        try:
            expanded = prefix.format(hostname="h", yyyy="2026", mm="01", dd="01")
        except (KeyError, IndexError, ValueError) as exc:
            yield (f"[s3] prefix = {prefix!r}: expected only the placeholders {{hostname}}, {{yyyy}}, {{mm}}, "
                   f"{{dd}} ({exc})")
        else:
            yield from _prefix_problems(prefix, expanded)
    if v.get(("s3", "endpoint_url")):
        ep = v[("s3", "endpoint_url")]
        if not re.match(r"^https?://[^/\s]+/?$", ep):
            yield f"[s3] endpoint_url = {ep!r}: expected http://HOST[:PORT] or https://HOST[:PORT]"


def _prefix_problems(prefix: str, expanded: str) -> Iterable[str]:
    """A prefix whose folders S3 servers would rewrite or refuse: an empty, ``.`` or ``..`` segment
    (collapsed, resolved or refused by servers, so two prefixes could name one place), a backslash
    (a folder separator to SeaweedFS) or a control character. A leading or trailing ``/`` is fine:
    it is dropped. Checked after the placeholders, with sample values."""
    parts = expanded.strip("/").split("/")
    bad = [p for p in parts if p in ("", ".", "..")] if expanded.strip("/") else []
    if bad:
        shown = ", ".join(repr(p) for p in dict.fromkeys(bad))
        yield (f"[s3] prefix = {prefix!r}: expected folder names separated by single '/', none of them empty, "
               f"'.' or '..' (found {shown})")
    if re.search(r"[\x00-\x1f\x7f\\]", expanded):
        yield f"[s3] prefix = {prefix!r}: expected no '\\' (use '/' between folders) and no control characters"


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False

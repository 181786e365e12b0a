"""What a cleanup pass did (:class:`PassResult`), the totals kept in the database's meta values,
and the lines ``status`` prints of them."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..store import Store, display

META_FILES_FREED = "cleanup.files_freed"
META_BYTES_FREED = "cleanup.bytes_freed"
META_REQUEUED = "cleanup.requeued"
META_LAST_PASS = "cleanup.last_pass"
HELD_EXAMPLES = 20  # held files named in the last pass's record (the counts cover all of them)


@dataclass
class PassResult:
    """What one pass did; saved (as JSON) for ``status`` and added to the daemon's counters."""

    at: float
    mode: str = "off"  # "age", "space" or "off"
    dry_run: bool = False
    action: str = "delete"
    examined: int = 0
    folders_listed: int = 0
    freed_files: int = 0
    freed_bytes: int = 0
    would_free_files: int = 0
    would_free_bytes: int = 0
    requeued: int = 0
    forgotten: int = 0
    held: Dict[str, int] = field(default_factory=dict)
    held_examples: List[Dict[str, str]] = field(default_factory=list)
    more: bool = False  # candidates are left that a prompt next pass can take
    total_bytes: Optional[int] = None
    free_bytes: Optional[int] = None  # at the start of the pass
    free_bytes_after: Optional[int] = None
    floor_bytes: Optional[int] = None
    disk_full_of_unuploaded: bool = False
    waiting_files: int = 0

    def hold(self, rel: str, reason: str, detail: str = "") -> None:
        self.held[reason] = self.held.get(reason, 0) + 1
        if len(self.held_examples) < HELD_EXAMPLES:
            self.held_examples.append({"path": display(rel), "reason": reason, "detail": detail})

    @property
    def held_total(self) -> int:
        return sum(self.held.values())

    def to_json(self) -> Dict[str, Any]:
        d = dict(self.__dict__)
        d["held_total"] = self.held_total
        return d


def cleanup_status(store: Store) -> Dict[str, Any]:
    """What ``status`` shows of cleanup: totals so far and the last pass (None before the first)."""
    raw = store.meta(META_LAST_PASS)
    try:
        last = json.loads(raw) if raw else None
    except ValueError:
        last = None
    return {
        "files_freed": int(store.meta(META_FILES_FREED, "0") or 0),
        "bytes_freed": int(store.meta(META_BYTES_FREED, "0") or 0),
        "requeued": int(store.meta(META_REQUEUED, "0") or 0),
        "last_pass": last,
    }


def cleanup_lines(c: Dict[str, Any]) -> List[str]:
    """The text ``status`` prints for :func:`cleanup_status`'s data (nothing before a first pass)."""
    last = c.get("last_pass")
    if not last and not c["files_freed"]:
        return []
    lines = [f"Cleanup: {c['files_freed']:,} file(s), {human(c['bytes_freed'])} freed so far; "
             f"{c['requeued']:,} queued to upload again (object missing or different, or file changed)"]
    if last:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["at"]))
        if last.get("dry_run"):
            done = f"would free {last['would_free_files']} file(s), {human(last['would_free_bytes'])} (dry run)"
        else:
            done = f"freed {last['freed_files']} file(s), {human(last['freed_bytes'])}"
        lines.append(f"  last pass {when} ({last['mode']}): examined {last['examined']}, {done}, "
                     f"held back {last['held_total']}")
        for reason, n in sorted(last.get("held", {}).items()):
            lines.append(f"    held back, {reason}: {n}")
        for h in last.get("held_examples", [])[:10]:
            lines.append(f"      {h['path']}: {h['reason']}" + (f" ({h['detail']})" if h.get("detail") else ""))
        if last.get("disk_full_of_unuploaded"):
            free = last.get("free_bytes_after", last["free_bytes"]) or 0
            lines.append(f"  WARNING: free space {human(free)} is below min_free_space "
                         f"({human(last['floor_bytes'] or 0)}) and nothing proven in S3 is left to delete: "
                         f"{last['waiting_files']} file(s) are waiting for upload and are never deleted for space")
    return lines


def human(n: float) -> str:
    """``n`` bytes in decimal units, as ``status`` and the log show sizes."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"

"""The state machine of a file's row: its states, the moves allowed between them, and the one
guarded UPDATE every move is.

States and the moves allowed between them (anything else raises :class:`IllegalTransition`)::

    pending ──> uploading ──> uploaded ──> deleted | archived
       ^  │          │  │         │
       │  └─> failed <┘  └─> pending (changed while read)
       │       │  ^            │
       │       v  │            └─> pending (changed after upload: sent again)
       └──── parked

    pending | failed | parked ──> uploaded   (one step: a single PUT of the asyncio sender)
    parked ──> parked                          (checked again, parked again: same problem, new error)
    failed ──> failed                          (an internal error before its upload started: failed again)
    deleted | archived ──> parked              (a new file at the path, whose key is another row's)

A move is ``UPDATE ... WHERE path = ? AND state IN (allowed sources)`` (:func:`move_sql`), so two
threads can never both move the same row.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

STATES = ("pending", "uploading", "uploaded", "failed", "parked", "deleted", "archived")
WAITING_STATES = ("pending", "uploading", "failed", "parked")  # not yet in S3
DONE_STATES = ("uploaded", "deleted", "archived")

TRANSITIONS: Dict[str, Tuple[str, ...]] = {
    "pending": ("uploading", "failed", "parked"),
    "uploading": ("uploaded", "failed", "parked", "pending"),
    "uploaded": ("pending", "deleted", "archived"),
    "failed": ("uploading", "pending", "parked", "failed"),
    "parked": ("uploading", "pending", "failed", "parked"),
    "deleted": ("pending", "parked"),
    "archived": ("pending", "parked"),
}
SOURCES: Dict[str, Tuple[str, ...]] = {
    dst: tuple(src for src, dsts in TRANSITIONS.items() if dst in dsts) for dst in STATES
}
# the one-step move of :meth:`Store.record_sent` (kept out of TRANSITIONS: every other path to
# uploaded goes through uploading, and finish_upload refuses a row that skipped it)
ONE_STEP_SOURCES = ("pending", "failed", "parked")


class IllegalTransition(Exception):
    """A state move the machine does not allow, or a row that was not in an allowed source state."""


def move_sql(dst: str, fields: Sequence[str]) -> Tuple[str, Tuple[str, ...]]:
    """The guarded UPDATE that moves one row to ``dst`` and sets ``fields``, and the source states it
    allows. Its parameters: ``dst``, the time, one value per field, the path, then those sources."""
    sources = SOURCES[dst]
    sets = ", ".join(["state = ?", "updated_at = ?"] + [f"{k} = ?" for k in fields])
    return f"UPDATE files SET {sets} WHERE path = ? AND state IN ({','.join('?' * len(sources))})", sources

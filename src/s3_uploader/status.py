"""What ``s3-uploader status`` shows, as plain data: one function, :func:`status_data`, behind both
``status --json`` (cli.py) and the status page's ``/api/status`` (statuspage.py), so the two cannot
differ. It only reads the store (a read-only one will do).
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

from .budget import stored_status as budget_status
from .cleanup import cleanup_status
from .destination import Destination, recorded_destination
from .outage import META_OUTAGE
from .outage import stored as outage_stored
from .store import WAITING_STATES, Store, display


def status_data(store: Store, now: Optional[float] = None) -> Dict[str, Any]:
    """Everything ``status`` shows, as plain data: the object ``status --json`` prints and the status
    page's ``/api/status`` serves. ``now`` (wall clock) is when ages are measured from."""
    now = time.time() if now is None else now
    counts = store.counts()
    oldest = store.oldest_waiting()
    text = recorded_destination(store)
    dest = Destination.from_json(text) if text is not None else None
    out: Dict[str, Any] = {
        "db_path": str(store.path),
        "destination": dest.describe() if dest is not None else None,
        "counts": counts,
        "total": sum(counts.values()),
        "waiting": sum(counts[s] for s in WAITING_STATES),
        "oldest_waiting": None if oldest is None else {
            "path": display(oldest.rel), "key": oldest.key, "state": oldest.state,
            "age_seconds": round(max(0.0, now - oldest.discovered_at), 3),
            "attempts": oldest.attempts, "last_error": oldest.last_error},
        "last_errors": [{"at": at, "path": display(p) if p else None, "kind": kind, "message": msg}
                        for at, p, kind, msg in store.last_errors(10)],
        "parked": [{"path": display(r.rel), "kind": r.error_kind, "error": r.last_error, "attempts": r.attempts}
                   for r in store.in_states(("parked",), limit=20)],
        "cleanup": cleanup_status(store),
        "outage": outage_stored(store.meta(META_OUTAGE)),
        "hooks": hooks_summary(store),
        "budget": budget_status(store, now),
    }
    return out


def hooks_summary(store: Store) -> Dict[str, Any]:
    """The "hooks" object: pending, delivered, given_up, last_error (see events.summary)."""
    from .events import summary
    with store.connection() as conn:
        return summary(conn)

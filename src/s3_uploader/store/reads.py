"""The store's reads: a row, rows by path, folder or state, the pages the stages walk through,
the counts and the oldest waiting row ``status`` shows, errors, meta values and multipart parts.

Nothing periodic costs time that grows with the rows (a camera's months are millions of them):
:meth:`Reads.counts` reads ``state_counts`` (seven rows, kept by triggers) and
:meth:`Reads.oldest_waiting` walks a partial index of the waiting rows.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .database import Database
from .machine import STATES, WAITING_STATES
from .rows import COLUMNS, Part, Record, dec, enc, record
from .schema import WAITING_SQL


class Reads:
    """Every query of the state database that changes nothing, through ``db``."""

    def __init__(self, db: Database):
        self.db = db

    def get(self, rel: str) -> Optional[Record]:
        rows = self.db.read(f"SELECT {COLUMNS} FROM files WHERE path = ?", (enc(rel),))
        return record(rows[0]) if rows else None

    def written(self, rel: str) -> Record:
        """The row of ``rel``, which the caller has just written (under the lock)."""
        rec = self.get(rel)
        assert rec is not None, rel
        return rec

    def get_many(self, rels: Sequence[str]) -> Dict[str, Record]:
        """The rows of ``rels`` that exist, by relative path (one query per 500)."""
        out: Dict[str, Record] = {}
        for i in range(0, len(rels), 500):  # stay under SQLite's bound-variable limit
            raws = [enc(r) for r in rels[i:i + 500]]
            for row in self.db.read(f"SELECT {COLUMNS} FROM files WHERE path IN ({','.join('?' * len(raws))})", raws):
                rec = record(row)
                out[rec.rel] = rec
        return out

    def in_dir(self, rel_dir: str) -> Dict[str, Record]:
        """Every row whose file lives directly in folder ``rel_dir``, by relative path."""
        rows = self.db.read(f"SELECT {COLUMNS} FROM files WHERE dir = ?", (enc(rel_dir),))
        return {r.rel: r for r in map(record, rows)}

    def signatures_of(self, rels: Sequence[str]) -> Dict[str, Tuple[str, int, int, int]]:
        """(state, size, mtime_ns, inode) of the rows of ``rels`` that exist: the rescan's hot path."""
        out: Dict[str, Tuple[str, int, int, int]] = {}
        for i in range(0, len(rels), 500):  # stay under SQLite's bound-variable limit
            chunk = rels[i:i + 500]
            raws = [enc(r) for r in chunk]
            q = ",".join("?" * len(raws))
            found = {r[0]: r[1:] for r in self.db.read(
                f"SELECT path, state, size, mtime_ns, inode FROM files WHERE path IN ({q})", raws)}
            if found:
                for rel, raw in zip(chunk, raws):
                    sig = found.get(raw)
                    if sig is not None:
                        out[rel] = sig
        return out

    def in_states(self, states: Sequence[str], after: bytes = b"", limit: int = 1000) -> List[Record]:
        """Rows in any of ``states``, in path order after ``after`` (for paging through many)."""
        if set(states) == set(WAITING_STATES) and self.db.counted:
            # every rescan pages through the waiting rows: through files_state each page sorted every
            # one of them (a backlog of 100,000 took 5 s a sweep, growing with its square)
            rows = self.db.read(f"SELECT {COLUMNS} FROM files INDEXED BY files_waiting_path WHERE {WAITING_SQL} "
                                "AND path > ? ORDER BY path LIMIT ?", (after, limit))
            return [record(r) for r in rows]
        q = ",".join("?" * len(states))
        rows = self.db.read(f"SELECT {COLUMNS} FROM files WHERE state IN ({q}) AND path > ? ORDER BY path LIMIT ?",
                            (*states, after, limit))
        return [record(r) for r in rows]

    def waiting_page(self, after: bytes = b"", limit: int = 500) -> List[Tuple[bytes, float]]:
        """(path bytes, discovered_at) of the waiting rows, in path order after ``after``: the rescan's
        sweep for vanished files pages through every one of them and needs no more. Two columns, not
        a :class:`Record`'s eighteen: Python's sqlite3 releases the interpreter lock for each column
        of each row it reads, and in the busy daemon each release can hand it to another thread."""
        if not self.db.counted:  # an older schema read-only: no partial index
            return [(enc(r.rel), r.discovered_at) for r in self.in_states(WAITING_STATES, after, limit)]
        return [(bytes(p), d) for p, d in self.db.read(
            f"SELECT path, discovered_at FROM files INDEXED BY files_waiting_path WHERE {WAITING_SQL} "
            "AND path > ? ORDER BY path LIMIT ?", (after, limit))]

    def backlog_page(self, newest: bool, after: Optional[Tuple[int, int, bytes]] = None,
                     limit: int = 500) -> List[Tuple[int, int, bytes]]:
        """The next ``limit`` pending rows in upload order (:mod:`s3_uploader.order`), as (rank,
        mtime_ns, path bytes): by rank, then (mtime, path) ascending (``newest``: descending); strictly after the cursor ``after`` (the last tuple of the previous page; None:
        from the start). Each page is its own short read (no transaction is held between pages),
        so rows written between two pages are seen when they sort after the cursor.

        Keyset pages through the partial index ``files_backlog`` one rank at a time: within a rank
        the index gives (mtime, path) in either direction, without a sort, and the next rank is one
        index look-up; a page costs the same at the end of a backlog of a million rows as at its
        start."""
        if after is None:
            first = self.db.read("SELECT min(rank) FROM files INDEXED BY files_backlog WHERE state = 'pending'")[0][0]
            if first is None:
                return []
            rank, pos = int(first), None  # type: int, Optional[Tuple[int, bytes]]
        else:
            rank, pos = after[0], (after[1], after[2])
        out: List[Tuple[int, int, bytes]] = []
        while True:
            cond, params = "", []  # type: str, List[object]
            if pos is not None:
                cond, params = f"AND (mtime_ns, path) {'<' if newest else '>'} (?, ?) ", [pos[0], pos[1]]
            way = "DESC" if newest else "ASC"
            out += self.db.read("SELECT rank, mtime_ns, path FROM files INDEXED BY files_backlog "
                                f"WHERE state = 'pending' AND rank = ? {cond}"
                                f"ORDER BY mtime_ns {way}, path {way} LIMIT ?", (rank, *params, limit - len(out)))
            if len(out) >= limit:
                return out
            nxt = self.db.read("SELECT min(rank) FROM files INDEXED BY files_backlog WHERE state = 'pending' "
                               "AND rank > ?", (rank,))[0][0]
            if nxt is None:
                return out
            rank, pos = int(nxt), None

    def due_retries(self, now: float, limit: int, horizon: Optional[float] = None) -> List[Record]:
        """Failed or parked rows whose next attempt is due, soonest first; with ``horizon``, also rows
        scheduled more than ``horizon`` seconds ahead, further than any delay the daemon sets: the
        wall clock was ahead when they were scheduled and has gone back since (a box that booted
        with a wrong clock, then NTP), and they would otherwise wait, unseen, until it catches up."""
        rows = self.db.read(f"SELECT {COLUMNS} FROM files WHERE state IN ('failed', 'parked') "
                            "AND next_attempt_at IS NOT NULL AND next_attempt_at <= ? "
                            "ORDER BY next_attempt_at LIMIT ?", (now, limit))
        if horizon is not None and len(rows) < limit:
            rows += self.db.read(f"SELECT {COLUMNS} FROM files WHERE state IN ('failed', 'parked') "
                                 "AND next_attempt_at > ? ORDER BY next_attempt_at DESC LIMIT ?",
                                 (now + horizon, limit - len(rows)))
        return [record(r) for r in rows]

    def uploaded_page(self, order: str, after: Optional[Tuple[Optional[float], bytes]] = None, limit: int = 1000,
                      uploaded_before: Optional[float] = None) -> List[Record]:
        """Uploaded rows (cleanup's candidates), oldest first by ``order`` (``uploaded_at`` or
        ``mtime_ns``, ties by path), strictly after the cursor ``after`` = (value, path bytes);
        with ``uploaded_before``, only rows uploaded at or before that wall-clock time."""
        if order not in ("uploaded_at", "mtime_ns"):
            raise ValueError(f"cannot order uploaded rows by {order!r}")
        where, params = ["state = 'uploaded'"], []  # literal, so the partial indexes apply
        if after is not None:
            where.append(f"({order}, path) > (?, ?)")
            params += [after[0], after[1]]
        if uploaded_before is not None:
            where.append("uploaded_at <= ?")
            params.append(uploaded_before)
        rows = self.db.read(f"SELECT {COLUMNS} FROM files WHERE {' AND '.join(where)} ORDER BY {order}, path LIMIT ?",
                            (*params, limit))
        return [record(r) for r in rows]

    def counts(self) -> Dict[str, int]:
        """Rows per state (every state present, 0 if none). Reads ``state_counts``, which triggers keep
        exact, so it costs the same at a million rows as at ten."""
        out = {s: 0 for s in STATES}
        sql = "SELECT state, n FROM state_counts" if self.db.counted else \
            "SELECT state, count(*) FROM files GROUP BY state"
        for state, n in self.db.read(sql):
            if n:
                out[state] = n
        return out

    def oldest_waiting(self) -> Optional[Record]:
        """The waiting row discovered first (None: every file found is in S3); one index look-up."""
        # INDEXED BY: without it the planner picks files_state and sorts every waiting row
        table = "files INDEXED BY files_waiting" if self.db.counted else "files"
        rows = self.db.read(f"SELECT {COLUMNS} FROM {table} WHERE {WAITING_SQL} ORDER BY discovered_at LIMIT 1")
        return record(rows[0]) if rows else None

    def last_errors(self, n: int = 10) -> List[Tuple[float, Optional[str], Optional[str], str]]:
        rows = self.db.read("SELECT at, path, kind, message FROM errors ORDER BY id DESC LIMIT ?", (n,))
        return [(at, dec(p) if p is not None else None, kind, msg) for at, p, kind, msg in rows]

    def meta(self, name: str, default: Optional[str] = None) -> Optional[str]:
        rows = self.db.read("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else default

    def parts(self, rel: str, upload_id: str) -> Dict[int, Part]:
        rows = self.db.read("SELECT part_number, size, etag, md5 FROM parts WHERE path = ? AND upload_id = ?",
                            (enc(rel), upload_id))
        return {n: Part(n, s, e, m) for n, s, e, m in rows}

    def owned_upload_ids(self) -> Dict[str, str]:
        """upload id -> S3 key of every multipart upload a row still owns."""
        return {uid: key for uid, key in self.db.read("SELECT upload_id, key FROM files WHERE upload_id IS NOT NULL")}

    def has_key(self, key: str) -> bool:
        """Whether any row's file goes to S3 key ``key``."""
        return bool(self.db.read("SELECT 1 FROM files WHERE key = ? LIMIT 1", (key,)))

    def key_holder(self, key: str) -> Optional[str]:
        """The relative path of the row that has S3 key ``key`` (None when no row has it)."""
        rows = self.db.read("SELECT path FROM files WHERE key = ?", (key,))
        return dec(rows[0][0]) if rows else None

    def iter_all(self, batch: int = 1000) -> Iterator[Record]:
        after = b""
        while True:
            rows = self.db.read(f"SELECT {COLUMNS} FROM files WHERE path > ? ORDER BY path LIMIT ?", (after, batch))
            if not rows:
                return
            for r in rows:
                yield record(r)
            after = rows[-1][0]

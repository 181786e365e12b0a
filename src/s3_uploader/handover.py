"""The hand-over: files the scheduler found ready, made into jobs for :class:`~s3_uploader.dispatch.Dispatch`.

:class:`HandOver` is owned by the :class:`~s3_uploader.scheduler.Scheduler`. The scheduler adds each
file it finds ready (already in ``inflight``) with :meth:`HandOver.add`; :meth:`HandOver.make_jobs`
reads their rows with one query and queues a :class:`~s3_uploader.job.Job` for each file that still
has something to send on ``ready``, marked ``small`` when the asyncio sender may take it
(:func:`fits_sender`). A file with nothing to send is let go of (out of ``inflight``); a key no retry
can send is parked. One file's error goes to ``set_aside`` and the others go on.

``ready`` is a :class:`~s3_uploader.order.ReadyHeap` in upload order (the ``priority`` patterns, then
mtime by ``order``; :mod:`s3_uploader.order`), the order discovery hands the backlog on in: a file
found ready later with a better place (a new snapshot matching a priority pattern, the newest file
with ``order = newest``) is handed to dispatch before the ready files it overtakes. A reload that
changes the order re-sorts the jobs waiting.
"""
from __future__ import annotations

import logging
from typing import Callable, List, Optional, Tuple

from . import logs
from .discovery import Discovery
from .dispatch import Dispatch
from .keys import key_problem
from .order import Order, ReadyHeap, SortKey, order_of
from .scanner import FileStat
from .store import DONE_STATES, IllegalTransition, Record, display
from .uploader import IN_MEMORY_MAX, Job, Settings
from .version import REMOVED_STATES
from .views import Live

log = logging.getLogger("s3_uploader.scheduler")  # the scheduler's lines, as before the split

BATCH_MAX = 256  # ready files made into jobs at once: the first uploads need not wait for a whole backlog


class HandOver:
    """Ready files (``add``) made into jobs (``make_jobs``) on the ``ready`` queue that ``dispatch`` feeds on.

    Its collaborators that the daemon replaces while it runs are read through ``live``
    (:class:`~s3_uploader.views.Live`) where used.
    """

    def __init__(self, *, live: Live, dispatch: Dispatch, discovery: Discovery, set_aside: Callable[..., None]):
        self.live = live
        self.dispatch = dispatch
        self.inflight = dispatch.inflight
        self.discovery = discovery
        self._set_aside = set_aside
        self._order = self._order_in_force()
        self.ready: ReadyHeap[Job] = ReadyHeap(self._key)
        # files found ready and not yet made into jobs (made together: one row read)
        self._batch: List[Tuple[str, FileStat, str]] = []

    def __len__(self) -> int:
        """Files found ready and not yet handed to ``dispatch`` (jobs queued, or still to be made)."""
        return len(self.ready) + len(self._batch)

    def add(self, rel: str, st: FileStat, path: str) -> None:
        """A file found ready, already in ``inflight``; its job is made at the next :meth:`make_jobs`
        (at once when :data:`BATCH_MAX` are waiting)."""
        self._batch.append((rel, st, path))
        if len(self._batch) >= BATCH_MAX:
            self.make_jobs()

    def _order_in_force(self) -> Order:
        up = self.live.cfg.upload
        return order_of(up.order, up.priority)

    def _key(self, job: Job) -> SortKey:
        return self._order.key(job.rel, job.stat.mtime_ns)

    def make_jobs(self) -> None:
        """Jobs for every file found ready since the last call, with one row read for all (and the
        jobs waiting sorted again if a reload changed the order)."""
        order = self._order_in_force()
        if order is not self._order:
            self._order = order
            self.ready.rekey(self._key)
        batch, self._batch = self._batch, []
        if batch:
            recs = self.live.store.get_many([rel for rel, _, _ in batch])
            for rel, st, path in batch:
                try:
                    self.make_job(rel, st, path, recs.get(rel))
                except Exception as exc:
                    self._set_aside(rel, "making the upload job of", exc, scheduled=True, st=st)

    def make_job(self, rel: str, st: FileStat, path: str, rec: Optional[Record]) -> None:
        """Queue the job for a file found ready and already marked in flight (``rec``: its row, None
        when there is none), or let it go (released from ``inflight``) when there is nothing to send."""
        job = self._job_for(rel, st, path, rec)
        if job is None:
            self.inflight.discard(rel)
            return
        self.ready.append(job._replace(small=True) if self._sendable(job) else job)

    def _job_for(self, rel: str, st: FileStat, path: str, rec: Optional[Record]) -> Optional[Job]:
        if rec is None:
            return None  # forgotten meanwhile (vanished); a new event or scan brings it back
        if rec.state == "uploaded" and rec.signature == st.signature:
            return None  # already uploaded (a scan and an event raced)
        scanner = self.live.scanner
        if rec.state in REMOVED_STATES:
            fresh = scanner.stat_one(rel)  # after the row was read: not the file cleanup removed since
            if fresh is None or fresh.signature != st.signature:
                return None  # a rescan finds whatever is there now
        if rec.key is None or rec.signature != st.signature or rec.state in DONE_STATES:
            # changed, a new file at a deleted/archived path (its own key, from its mtime), or
            # parked for a collision (the other file may be gone or renamed by now)
            key = self.live.keymaker.key_for(rel, st.mtime)
            rec = self.live.store.discover(rel, key, st.size, st.mtime_ns, st.ino,
                                           retry_at=self.discovery.collision_retry_at())
            if rec.key is None:
                log.error("%s", rec.last_error)
                return None
        problem = key_problem(rec.key)
        if problem is not None:
            self._park_unsendable(rec, problem)
            return None
        logs.per_file(log, "File ready (%d bytes): %s", st.size, display(rel))
        if self.live.cfg.watch.follow_symlinks:
            # resolved now and re-checked: a link retargeted since the check must not lead outside
            resolved = scanner.resolve_inside(path)
            if resolved is None:
                log.warning("Symlink leads outside the watched directory, not followed: %s", display(rel))
                return None
            path = resolved
        return Job(rel, path, rec.key, st, rec.attempts + 1, rec.upload_id, rec.part_size)

    def _park_unsendable(self, rec: Record, problem: str) -> None:
        """Park a file no retry can send (its key is over S3's limit). It may be parked already
        (checked again after a rescan, a retry or a reload): it is parked again, never an error."""
        log.error("Cannot upload %s: %s; parked (rename the file to upload it)", display(rec.rel), problem)
        try:
            self.live.store.fail_upload(rec.rel, "invalid", problem, None, park=True)
        except IllegalTransition as exc:  # moved on meanwhile (e.g. vanished): its new state decides
            log.debug("Not parking: %s", exc)

    def _sendable(self, job: Job) -> bool:
        """Whether the asyncio sender (if there is one) can take ``job``: :func:`fits_sender`.
        (At hand-over, also no bandwidth limit in force: waiting for it would block the loop.)"""
        live = self.live
        return self.dispatch.sender is not None and fits_sender(job, live.upload_settings(), live.remote.async_ok)


def fits_sender(job: Job, s: Settings, async_ok: Callable[[str], bool]) -> bool:
    """Whether the asyncio sender can send ``job`` under settings ``s``: a single PUT read into
    memory, no open multipart upload to settle, an ETag that proves the object, attributes obstore
    can send (no Object Lock, no checksum), and a key obstore keeps as it is (``async_ok``)."""
    return (job.stat.size <= IN_MEMORY_MAX and job.stat.size < s.multipart_threshold and job.upload_id is None
            and s.put_options.etag_is_md5 and s.objects.obstore_ok and async_ok(job.key))

"""Start-up checks and recovery: what ``run`` and ``once`` do before their first thread starts, and
what ``s3-uploader check`` reports, from one implementation.

The checks, in the order a user would fix them: the watch directory, the state database, access
to the bucket, the writer check, the filesystem-events watch limit, a changed destination. ``run``
stops at the first failure with a :class:`StartupError` (one line, no traceback); ``check`` says
every one, a line each, and exits 1 when any failed. The messages are the same words in both.

Recovery (``run`` only, after the access check so a mistyped bucket stops us before any row is
touched): uploads interrupted by the last stop are resumed, the state database follows a changed
destination, multipart uploads nobody owns are aborted, and a single pass gives parked files one
more try. The listing of multipart uploads is asked for beside the access check
(:class:`UploadListing`), so its round trip overlaps HeadBucket's; what is aborted is still decided
after both, from the listing and the rows as recovery leaves them.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .config import Config
from .destination import Destination, OwnKeys, follow_destination, recorded_destination
from .keys import Filters, KeyMaker
from .objects import check_object_lock
from .remote import TLS_CODE, MultipartUpload, Remote, RemoteError, remote_from_config
from .retry import classify
from .runmode import RunMode
from .store import DatabaseClaim, Store, StoreError
from .writers import WriterProbe

log = logging.getLogger(__name__)

class StartupError(Exception):
    """The daemon cannot start; the message is one line for the user (no traceback)."""


def watch_dir_problem(root: Path) -> Optional[str]:
    """None when ``root`` is a directory we can list, else the one line that says what is wrong."""
    if not root.is_dir():
        if root.exists():
            return f"Watch directory is not a directory: {root}"
        return f"Watch directory does not exist: {root}"
    if not os.access(root, os.R_OK | os.X_OK):
        return f"Watch directory cannot be read (permission denied): {root}"
    return None


def no_access(cfg: Config, exc: RemoteError, detail: Optional[str] = None) -> str:
    """The line for a failed access check: a TLS failure as itself (the endpoint answers and we do
    not trust it: not "no bucket"), anything else as no bucket or no access, with ``detail``
    (default: the reason) in brackets."""
    if exc.code == TLS_CODE:
        return exc.reason
    return f"S3 bucket {cfg.s3.bucket} does not exist or you don't have access ({detail or exc.reason})"


def open_state(cfg: Config, wall: Callable[[], float]) -> Tuple[DatabaseClaim, Store]:
    """Claim the state database (one daemon per database) and open it; StartupError when either fails."""
    try:
        claim = DatabaseClaim(cfg.daemon.db_path)
        return claim, Store(cfg.daemon.db_path, clock=wall)
    except StoreError as exc:
        raise StartupError(str(exc)) from None


def check_access(cfg: Config, remote: Remote, mode: RunMode) -> Optional[str]:
    """Check the bucket answers. Returns None when it does, or the reason when the endpoint is down
    and ``mode`` starts anyway (logged as a WARNING); raises StartupError otherwise."""
    try:
        remote.check_access()
    except RemoteError as exc:
        endpoint = cfg.s3.endpoint_url or "(AWS)"
        if exc.code == TLS_CODE or not exc.endpoint_down:  # the bucket or the credentials are wrong
            raise StartupError(no_access(cfg, exc)) from None
        if not mode.starts_while_endpoint_down:
            raise StartupError(no_access(cfg, exc, f"S3 endpoint {endpoint} is not answering: {exc.reason}")) from None
        # a box that boots before its network, or an outage: exiting would only make the service
        # manager give up on us after a few restarts, while files pile up with nobody to send them
        log.warning("S3 endpoint %s is not answering (%s); starting anyway: files wait and go when it answers",
                    endpoint, exc.reason)
        return exc.reason
    return None


class UploadListing:
    """The multipart uploads in progress under ``prefix``, listed on a thread of its own from the
    moment this is made, so the request goes out beside the access check instead of one round
    trip after it (on a second connection: HTTP/1.1 does not pipeline). It only reads: what is
    aborted is decided by :func:`abort_stale_multipart`, after the access check and the destination
    follow-up, from :meth:`uploads` and the rows as they are then, and before any upload starts
    (so an upload of this run is never in the listing)."""

    def __init__(self, remote: Remote, prefix: str):
        self.prefix = prefix
        self._remote = remote
        self._uploads: List[MultipartUpload] = []
        self._error: Optional[Exception] = None
        self._thread = threading.Thread(target=self._list, name="multipart-listing", daemon=True)
        self._thread.start()

    def _list(self) -> None:
        try:
            self._uploads = list(self._remote.list_multipart_uploads(self.prefix))
        except Exception as exc:  # said by abort_stale_multipart, which decides what it means
            self._error = exc

    def uploads(self) -> List[MultipartUpload]:
        """Wait for the listing (bounded by the client's own timeouts) and return it, or raise what
        listing raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._uploads

    def discard(self, timeout: float = 5.0) -> None:
        """The start-up failed before the sweep read the listing: wait up to ``timeout`` for it to
        end, and forget it. After a failed access check it ends about when the check did (same
        endpoint, same moment); a thread still waiting on a dead endpoint past that is a daemon
        thread and does not hold the exit."""
        self._thread.join(timeout)


def recover(cfg: Config, store: Store, remote: Remote, keymaker: KeyMaker, filters: Filters, mode: RunMode,
            wall: Callable[[], float], listing: Optional[UploadListing] = None) -> None:
    """Put the state database right before the first thread starts (see the module's docstring)
    and commit; StartupError when the database refuses. ``listing``: the multipart uploads asked
    for already (else they are listed here)."""
    n = store.recover_interrupted()
    if n:
        log.info("%d upload(s) were interrupted by the last stop; they will be resumed", n)
    # before the sweep, which must see the upload ids of the destination we now send to
    try:
        follow_destination(store, cfg, keymaker, filters)
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    abort_stale_multipart(store, remote, keymaker, cfg.s3.bucket, listing)
    if mode.single_pass:
        store.retry_parked(wall())  # a manual run tries everything once more
    store.commit()


def abort_stale_multipart(store: Store, remote: Remote, keymaker: KeyMaker, bucket: str,
                          listing: Optional[UploadListing] = None) -> int:
    """Abort the multipart uploads to keys this host can own that no row owns; returns how many.

    They are left by a crash between CreateMultipartUpload and recording its id, or by a file
    that vanished mid-upload, and S3 bills their parts until aborted. Only keys this host can
    own are listed (:class:`~s3_uploader.destination.OwnKeys`): under the prefix up to its
    first placeholder other than ``{hostname}``, with our hostname filled in, and of our
    template's shape, so with ``prefix = cams/{hostname}/{yyyy}`` the other hosts' uploads in
    progress under ``cams/`` are left alone. When that leaves no fixed prefix (the bucket root,
    or a prefix that starts with a date), only uploads to keys our own rows go to are touched.
    A failure to list (some servers lack the API) is a warning: the lifecycle rule covers it.
    ``listing``: the uploads asked for already, under the same prefix (else they are listed here).
    """
    own = OwnKeys(keymaker)
    prefix = own.listing_prefix
    owned = store.owned_upload_ids()
    if listing is not None and listing.prefix != prefix:
        raise ValueError(f"the listing is of {listing.prefix!r}, the sweep's prefix is {prefix!r}")
    n = 0
    try:
        for up in (listing.uploads() if listing is not None else remote.list_multipart_uploads(prefix)):
            if up.upload_id in owned or not (own.could_own(up.key) or store.has_key(up.key)):
                continue
            remote.abort_multipart(up.key, up.upload_id)
            log.info("Aborted stale multipart upload of %s (upload id %s, owned by no file)", up.key, up.upload_id)
            n += 1
    except Exception as exc:  # listing is an optimisation; never a reason not to start
        log.warning("Could not look for stale multipart uploads under s3://%s/%s (%s); a bucket lifecycle "
                    "rule (AbortIncompleteMultipartUpload) cleans them up", bucket, prefix, classify(exc).message)
    return n


def say_writer_check(probe: WriterProbe) -> None:
    """Say once how open writers are found (DEBUG), and loudly when some of them cannot be seen."""
    blind = probe.blind_spot()
    if blind is not None:
        log.warning("%s", blind)
    else:
        log.debug("Writer check: %s", probe.method())


def check(cfg: Config, say: Callable[[str], None]) -> Tuple[bool, bool]:
    """``s3-uploader check``: every check, one line each through ``say``. Returns (ok, refused): ok
    when none failed (the writer check's blind spot, the watch limit and a changed destination are
    warnings); refused when the bucket cannot take the configuration (an Object Lock setting on a
    bucket without Object Lock), which ``check`` reports as a usage error."""
    ok, refused = True, False
    say(f"Config OK: {cfg.source}")
    root = cfg.watch_root
    problem = watch_dir_problem(root)
    if problem is not None:
        say(problem)
        ok = False
    else:
        say(f"Watch directory OK: {root}")
        if cfg.watch.use_events:
            say(events_line(str(root)))
    if root.is_dir():
        probe = WriterProbe(str(root))
        # a warning, not a failure: size and mtime stability still decide for what it cannot see
        say(probe.blind_spot() or f"Writer check OK: {probe.method()}")
    db = Path(cfg.daemon.db_path)
    folder = db.parent if not db.exists() else db
    if os.access(folder if folder.exists() else folder.parent, os.W_OK):
        say(f"State database OK: {db}")
    else:
        say(f"State database cannot be written: {db}")
        ok = False
    try:
        remote = remote_from_config(cfg)
        remote.check_access()
        say(f"S3 bucket OK: s3://{cfg.s3.bucket}/{cfg.s3.prefix} ({cfg.s3.endpoint_url or 'AWS'})")
        lock_line, refused = check_object_lock(remote.client, cfg.s3.bucket, cfg.s3.object_lock_mode,
                                               cfg.s3.object_lock_legal_hold)
        say(lock_line)
        remote.close()
    except RemoteError as exc:
        say(no_access(cfg, exc))
        ok = False
    except Exception as exc:  # e.g. a profile that does not exist
        say(f"S3 bucket {cfg.s3.bucket} cannot be checked ({' '.join(str(exc).split())})")
        ok = False
    line = destination_change(cfg, db)
    if line:
        say(line)
    return ok, refused


def events_line(root: str) -> str:
    """``check``'s line on filesystem events: the folders to watch against the inotify limit."""
    from .watcher import watch_limit
    folders = sum(1 for _ in os.walk(root))
    limit = watch_limit()
    if limit is None:
        return f"Filesystem events: {folders:,} folder(s) to watch"
    if folders > limit:
        return (f"Filesystem events: WARNING: {folders:,} folders to watch, over the inotify limit of {limit:,} "
                f"per user (fs.inotify.max_user_watches): the rest are seen only by rescans; raise it: "
                f"sysctl -w fs.inotify.max_user_watches={max(2 * limit, 4 * folders)}")
    return (f"Filesystem events: {folders:,} folder(s) to watch, inotify allows {limit:,} watches per user "
            f"(fs.inotify.max_user_watches; other programs of the same user share it)")


def destination_change(cfg: Config, db: Path) -> Optional[str]:
    """What the next start will do about a destination that differs from the one the database
    records (None when it is the same, or nothing is recorded). Opens the database read-only."""
    if not db.exists():
        return None
    try:
        with Store(db, readonly=True) as store:
            text = recorded_destination(store)
    except StoreError:
        return None  # the daemon's own start-up says what is wrong with it
    if text is None:
        return None
    old = Destination.from_json(text)
    if old == Destination.from_config(cfg):
        return None
    was = old.describe() if old is not None else "an unreadable record"
    return f"Destination changed since the last run (was {was}): the next start uploads every file still present again"

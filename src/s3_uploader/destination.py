"""Where the bytes go: the destination recorded in the state database, and the keys this host owns.

A row marked ``uploaded`` says "S3 had these bytes under this key" about one place: the endpoint
and bucket it was sent to, under the prefix then configured. :class:`Destination` names that place
and is recorded in the store's ``meta`` table. At start-up :func:`follow_destination` compares it
with the configured one; after a change, every file still present locally is sent to the new
destination (one line says so), so a row is only ever ``uploaded`` for the destination it was
proven at, and cleanup, which acts on ``uploaded`` rows only, never trusts the old one's proof.

What counts as a change, and why:

- the endpoint, as configured: scheme and host lowercased, the default port and a trailing ``/``
  dropped (``http://Host:80/`` is ``http://host``). Any other difference counts, aliases included
  (``127.0.0.1`` and ``localhost`` may well be one server, but nothing here can prove it, and a
  needless upload costs bandwidth while a wrong "same place" would cost a file). No endpoint is
  ``aws``: a bucket name is unique across AWS, so the region does not name another place;
- the bucket;
- the prefix *template* (``cams/{hostname}/{yyyy}``), not its filled-in values: keys are decided
  once per file, so a renamed host or a new day sends nothing again.

A database with no destination recorded (written before this existed, or new) just records the
configured one: nothing is sent again on upgrade.

:class:`OwnKeys` says which keys in a shared bucket this host can own: the only ones its start-up
sweep of stale multipart uploads may abort.
"""
from __future__ import annotations

import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from .config import Config
from .keys import Filters, KeyMaker
from .store import Store, display

log = logging.getLogger(__name__)

META_DESTINATION = "destination"
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_endpoint(url: str) -> str:
    """``url`` as compared between runs: '' (no endpoint) is ``aws``; otherwise scheme://host[:port][/path]
    with scheme and host lowercased and the scheme's default port and trailing '/' dropped."""
    url = url.strip()
    if not url:
        return "aws"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    try:
        port = parts.port
    except ValueError:  # not a port: keep the text as it is (config validation reports it)
        return url.rstrip("/")
    netloc = host if port is None or DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class Destination:
    """Where a row's bytes are: an endpoint (normalised; ``aws`` for AWS), a bucket, a prefix template."""

    endpoint: str
    bucket: str
    prefix: str

    @classmethod
    def from_config(cls, cfg: Config) -> "Destination":
        return cls(normalise_endpoint(cfg.s3.endpoint_url), cfg.s3.bucket, cfg.s3.prefix.strip("/"))

    def to_json(self) -> str:
        return json.dumps({"endpoint": self.endpoint, "bucket": self.bucket, "prefix": self.prefix},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Optional["Destination"]:
        """The recorded destination, or None when the record cannot be read (treated as a change)."""
        try:
            d = json.loads(text)
            return cls(str(d["endpoint"]), str(d["bucket"]), str(d["prefix"]))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        where = "AWS" if self.endpoint == "aws" else self.endpoint
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''} at {where}"


def recorded_destination(store: Store) -> Optional[str]:
    """The destination recorded in ``store`` (raw text), or None. Reads only: safe on a read-only store."""
    return store.meta(META_DESTINATION)


def follow_destination(store: Store, cfg: Config, keymaker: KeyMaker, filters: Filters) -> Optional[str]:
    """Make ``store`` describe the configured destination; when it changed, log (WARNING) and
    return the start-up line that says so, else return None.

    Nothing recorded: the configured destination is recorded, nothing else changes. Recorded and
    equal: nothing happens. Changed: :meth:`Store.rebase_destination` puts every row whose file may
    be sent again to the new place (keys recomputed from the new prefix and each row's mtime), and
    records the new destination, in one transaction. Raises StoreError when the database refuses.
    """
    new = Destination.from_config(cfg)
    recorded = recorded_destination(store)
    if recorded is None:
        store.set_meta(META_DESTINATION, new.to_json())
        store.commit()
        return None
    old = Destination.from_json(recorded)
    if old == new:
        return None
    root = str(cfg.watch_root)
    follow = cfg.watch.follow_symlinks

    def present(rel: str) -> bool:
        return filters.file_allowed(rel) and _is_file(os.path.join(root, rel), follow)

    result = store.rebase_destination(META_DESTINATION, new.to_json(),
                                      lambda rel, mtime_ns: keymaker.key_for(rel, mtime_ns / 1e9), present)
    was = old.describe() if old is not None else "an unreadable record"
    line = (f"Destination changed from {was} to {new.describe()}: {result.resent} file(s) still present locally "
            f"will be uploaded again")
    if result.waiting:
        line += f", and {result.waiting} waiting file(s) go to the new destination"
    log.warning("%s", line)
    for rel, _old, wanted in result.clashes:
        holder = store.key_holder(wanted)
        log.error("%s would go to S3 key %s in the new destination, which %s already has; parked (rename one of "
                  "them)", display(rel), wanted, display(holder) if holder else "another file")
    return line


def _is_file(path: str, follow_symlinks: bool) -> bool:
    """Whether ``path`` is a file the scanner would upload: a regular file (through a symlink only
    with ``follow_symlinks``)."""
    try:
        st = os.stat(path) if follow_symlinks else os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode)


class OwnKeys:
    """The keys this host can own in the bucket: what the start-up multipart sweep may touch.

    ``listing_prefix`` is the prefix template up to its first placeholder other than ``{hostname}``,
    with our hostname filled in ('' when that leaves nothing, e.g. a template that starts with
    ``{yyyy}``); ``could_own(key)`` says whether our template could have made ``key`` (hostname
    ours, dates as digits), so ``cams/{hostname}-{yyyy}`` on host ``a`` lists ``cams/a-`` but
    leaves host ``a-b``'s ``cams/a-b-2026/...`` alone.
    """

    def __init__(self, keymaker: KeyMaker):
        template = keymaker.template
        host = keymaker.hostname
        filled = template.replace("{hostname}", host)
        if "{" in filled:
            self.listing_prefix = filled.split("{", 1)[0]
        else:
            self.listing_prefix = filled + "/" if filled else ""
        pattern = ""
        for piece in re.split(r"(\{hostname\}|\{yyyy\}|\{mm\}|\{dd\})", template):
            pattern += {"{hostname}": re.escape(host), "{yyyy}": r"\d{4}", "{mm}": r"\d{2}",
                        "{dd}": r"\d{2}"}.get(piece, re.escape(piece))
        self._rx: Optional["re.Pattern[str]"] = re.compile(pattern + "/.+", re.DOTALL) if template else None

    def could_own(self, key: str) -> bool:
        """Whether ``key`` has the shape of our keys (always False without a prefix: any key could be
        anybody's; then only our rows' keys count)."""
        return self._rx is not None and self._rx.fullmatch(key) is not None


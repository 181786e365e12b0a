"""Where the bytes go: the keys this host owns in the bucket.

Several hosts may share a bucket (``prefix = cams/{hostname}/...``); whatever one host does to
keys it did not make (aborting a multipart upload) it must only do to keys it can own.
"""
from __future__ import annotations

import re
from typing import Optional

from .keys import KeyMaker


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


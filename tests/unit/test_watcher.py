"""The watcher asks the kernel only for the events it uses, and turns them into hints."""

from __future__ import annotations

import os
import sys
from typing import Dict, List

import pytest
from helpers import wait_for

from s3_uploader.watcher import Hints, Watcher

IN_CLOSE_NOWRITE, IN_OPEN = 0x10, 0x20  # <sys/inotify.h>


def _inotify_masks() -> List[int]:
    """The event mask of every inotify watch this process holds, as the kernel shows it."""
    masks = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("inotify wd:"):
                        fields = dict(kv.split(":", 1) for kv in line.split()[1:] if ":" in kv)
                        masks.append(int(fields["mask"], 16))
        except OSError:
            continue
    return masks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify masks are Linux's")
def test_reading_a_file_or_listing_a_folder_queues_no_event_in_the_kernel(tmp_path):
    """With every event subscribed, each folder a rescan lists queued IN_OPEN and IN_CLOSE_NOWRITE:
    a tree of 4,177 folders overflowed the kernel's 16,384-event queue on every rescan, and the
    overflow's own rescan overflowed it again, for ever (found by bench/million.py). The watches
    must ask for neither, on the root and on every folder below it."""
    for d in ("a", "a/b", "c"):
        (tmp_path / d).mkdir()
    hints = Hints()
    folders: List[str] = []
    w = Watcher(str(tmp_path), hints, folders.append)
    before = len(_inotify_masks())
    w.start()
    try:
        wait_for(lambda: len(_inotify_masks()) >= before + 4, timeout=10, what="a watch on each of the 4 folders")
        masks = _inotify_masks()[before:]
        assert masks and all(m & (IN_OPEN | IN_CLOSE_NOWRITE) == 0 for m in masks), [hex(m) for m in masks]
        # and what it does ask for still arrives: a new folder, a file written and closed
        (tmp_path / "c" / "new").mkdir()
        (tmp_path / "a" / "b" / "clip.mp4").write_bytes(b"x" * 10)
        wait_for(lambda: "c/new" in folders, timeout=10, what="the new folder")
        seen: Dict[str, bool] = {}

        def clip_hinted() -> bool:
            items, _ = hints.drain()
            seen.update(items)
            return seen.get("a/b/clip.mp4") is True  # urgent: closed after writing
        wait_for(clip_hinted, timeout=10, what="the written file's close as an urgent hint")
    finally:
        w.stop()

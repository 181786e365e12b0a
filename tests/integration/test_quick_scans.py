"""Quick rescans (issue 16, a million files at rest): between full rescans, a folder whose own mtime
is unchanged is not listed again. A file edited in place does not change its folder, so with
filesystem events off nothing but the full rescan at ``full_scan_interval`` can find it: it must."""
from __future__ import annotations

import os
import re
import time

import pytest
from helpers import get_bytes, list_keys, make_files

pytestmark = pytest.mark.integration

SCAN = re.compile(r"Scan: \d+ files, \d+ to upload, .*; (quick|full): (\d+) folders, (\d+) not listed again")


def test_a_file_edited_in_place_with_events_off_is_uploaded_at_the_full_rescan(workspace, s3_client):
    make_files(workspace.inbox, [("cam1/clip.jpg", b"v1"), ("cam1/other.jpg", b"other")])
    past = time.time_ns() - 3600 * 10**9  # folders at rest: older than the racy margin
    for folder in (workspace.inbox / "cam1", workspace.inbox):
        os.utime(folder, ns=(past, past))
    workspace.config(watch={"use_events": "false", "scan_interval": "0.5s", "full_scan_interval": "8s"},
                     daemon={"log_level": "DEBUG"})
    d = workspace.start()
    d.wait_until(lambda: get_bytes(s3_client, workspace.bucket, "cam1/clip.jpg") == b"v1"
                 if "cam1/clip.jpg" in list_keys(s3_client, workspace.bucket) else None, what="the first upload")
    # right after a full rescan, so that quick ones come before the next
    d.wait_log(r"; quick: 2 folders, 2 not listed again")
    fulls = d.output().count("; full: ")
    d.wait_until(lambda: d.output().count("; full: ") > fulls, what="a full rescan")
    edited_at = len(SCAN.findall(d.output()))
    with open(workspace.inbox / "cam1" / "clip.jpg", "r+b") as f:  # same inode, same folder entry
        f.write(b"v2, edited in place")
    out = d.wait_log(r"Successfully uploaded cam1/clip.jpg \(19 bytes", timeout=40)
    assert get_bytes(s3_client, workspace.bucket, "cam1/clip.jpg") == b"v2, edited in place"
    scans = SCAN.findall(out)[edited_at + 1:]  # every one of these started after the edit
    changed = out.index("File changed since it was uploaded; will upload again: cam1/clip.jpg")
    found_by = SCAN.search(out, changed)
    assert found_by is not None and found_by.group(1) == "full", out[-3000:]
    quick_before = [s for s in scans[:[s[0] for s in scans].index("full")]]
    assert quick_before and all(s[2] == "2" for s in quick_before), scans  # cam1 was not listed meanwhile
    assert d.stop() == 0

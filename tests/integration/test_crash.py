"""kill -9 at seeded random moments, again and again: no file is lost, none is half-sent, and only
files in flight at a kill are sent twice.

The daemon runs as a subprocess behind the fault proxy (no faults injected: the proxy only counts
and timestamps every request, and slows parts down so kills land while they are in flight), with
cleanup deleting local copies one second after their upload. Each round adds files (small, medium
and multipart), starts the daemon, waits for one of three moments (a random delay; a multipart
part in flight; a cleanup pass deleting files) and sends SIGKILL. After every round, every file
missing locally must be in S3 byte-identical. At the end a clean run finishes the work and:

- every file ever created is in S3 byte-identical, and any local copy left is unchanged;
- no object was stored twice unless its first copy was under way at a kill (its request reached
  the server before the kill and was answered after it, or moments before it: S3 had it, the
  database did not yet), and the same for every multipart part;
- no multipart upload is left open in the bucket.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Dict, List

import pytest
from helpers import get_bytes, list_keys, wait_for

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
SEED = 20261121
ROUNDS = 12
# A copy sent again counts as in flight at a kill when its request reached the proxy before the kill
# and its answer came back after it (the proxy finishes a request whose client was killed) or at
# most this long before it (the group commit is 50 ms; the rest is slack for a loaded 2-core box).
IN_FLIGHT_BEFORE = 0.5


def add_files(rng: random.Random, inbox: Path, round_no: int, small: int, medium: int, big: int) -> Dict[str, bytes]:
    out: Dict[str, bytes] = {}
    specs = ([("s", rng.randint(0, 64 * 1024)) for _ in range(small)]
             + [("m", rng.randint(200_000, 2 * MiB)) for _ in range(medium)]
             + [("b", rng.randint(6 * MiB, 11 * MiB)) for _ in range(big)])
    for i, (kind, size) in enumerate(specs):
        rel = f"r{round_no:02d}/{kind}/{i:03d}.bin"
        data = rng.randbytes(size)
        p = inbox / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[rel] = data
    return out


def test_kill_9_at_random_moments_never_loses_or_tears_a_file_and_resends_only_what_was_in_flight(
        workspace, proxy, s3_client):
    proxy.delay("UploadPart", 0.25)  # so kills find parts in flight
    proxy.delay("PutObject", 0.01)
    rng = random.Random(SEED)
    workspace.config(watch={"scan_interval": "1s"},
                     s3={"endpoint_url": proxy.endpoint},
                     upload={"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB", "max_concurrency": 2,
                             "upload_workers": 4},
                     cleanup={"delete_after": "1s", "cleanup_interval": "1s"})
    files = add_files(rng, workspace.inbox, 0, small=180, medium=12, big=4)
    # the moments to kill at: parts in flight, a cleanup pass deleting, or anywhere (shuffled, seeded)
    moments = ["part"] * 4 + ["cleanup"] * 4 + ["random"] * (ROUNDS - 8)
    rng.shuffle(moments)
    kills: List[float] = []
    seen_deleted: set = set()
    log = workspace.config_path.with_suffix(".stderr.log")
    t0 = time.monotonic()
    for round_no, moment in enumerate(moments, start=1):
        files.update(add_files(rng, workspace.inbox, round_no, small=10, medium=1, big=1 if moment == "part" else 0))
        offset = log.stat().st_size if log.exists() else 0

        def round_log() -> str:
            return log.read_bytes()[offset:].decode(errors="replace")

        d = workspace.start()
        if moment == "part":
            wait_for(lambda: proxy.active("UploadPart") > 0, timeout=30, interval=0.01,
                     what=f"round {round_no}: a part in flight")
        elif moment == "cleanup":
            wait_for(lambda: "Deleted local copy of" in round_log(), timeout=30, interval=0.01,
                     what=f"round {round_no}: a cleanup pass deleting files")
        else:
            wait_for(lambda: "Watching" in round_log(), timeout=30, what=f"round {round_no}: start-up")
            time.sleep(rng.uniform(0.0, 1.5))  # the random moment itself is what this round tests
        assert d.proc.poll() is None, round_log()[-3000:]
        d.kill()
        kills.append(time.monotonic())
        # after every kill: whatever is gone locally is in S3, byte-identical
        gone = {rel for rel in files if not (workspace.inbox / rel).exists()} - seen_deleted
        for rel in sorted(gone):
            assert get_bytes(s3_client, workspace.bucket, rel) == files[rel], f"round {round_no}: {rel} lost"
        seen_deleted |= gone

    d = workspace.start()
    d.wait_log("Watching")
    wait_for(lambda: len(list_keys(s3_client, workspace.bucket)) == len(files), timeout=120,
             what="every file in S3 after the last restart")
    assert d.stop() == 0
    elapsed = time.monotonic() - t0

    for rel, data in files.items():
        assert get_bytes(s3_client, workspace.bucket, rel) == data, rel
        local = workspace.inbox / rel
        if local.exists():
            assert local.read_bytes() == data, rel
    assert s3_client.list_multipart_uploads(Bucket=workspace.bucket).get("Uploads", []) == []

    def in_flight_at_a_kill(e) -> bool:
        return any(e.started_at <= k and e.done_at >= k - IN_FLIGHT_BEFORE for k in kills)

    # each object and each part stored more than once: every copy but the last must have been in flight
    objects: Dict[str, List] = {}
    parts: Dict[tuple, List] = {}
    for e in proxy.select():
        if e.status != 200:
            continue
        if e.op in ("PutObject", "CompleteMultipartUpload"):
            objects.setdefault(e.key, []).append(e)
        elif e.op == "UploadPart":
            parts.setdefault((e.key, e.part_number), []).append(e)
    completed_in_flight = {e.upload_id for sends in objects.values() for e in sends[:-1]
                           if e.op == "CompleteMultipartUpload" and in_flight_at_a_kill(e)}
    unexplained = [(key, [(e.started_at, e.done_at) for e in sends]) for key, sends in objects.items()
                   if not all(in_flight_at_a_kill(e) for e in sends[:-1])]
    # a part sent again: it was in flight itself, or its whole upload was (completed, not yet recorded)
    unexplained += [(what, [(e.started_at, e.done_at) for e in sends]) for what, sends in parts.items()
                    if not all(in_flight_at_a_kill(e) or e.upload_id in completed_in_flight
                               for e in sends[:-1])]
    assert unexplained == [], f"sent again without being in flight at a kill (kills at {kills}): {unexplained}"
    resent_objects = sum(len(v) - 1 for v in objects.values())
    resent_parts = sum(len(v) - 1 for v in parts.values())
    assert len(kills) == ROUNDS and len(files) >= 300
    print(f"\n{len(files)} files, {ROUNDS} kills ({', '.join(moments)}), {len(seen_deleted)} deleted by cleanup "
          f"between kills, {resent_objects} object(s) and {resent_parts} part(s) sent again, {elapsed:.1f}s")

"""Seeded, reproducible upload workloads: the same seed and scale give byte-identical trees.

- ``small``: many 4 KiB files in nested folders (10 x 10 folders; 10,000 files at scale 1).
- ``large``: a few 128 MiB files (8 at scale 1), above the multipart threshold.
- ``mixed``: a camera-like tree, ``cam<N>/<date>/<hour>/`` with one 1-24 MiB ``.mp4`` per event,
  3-10 ``.jpg`` stills of 50 KiB-2.5 MiB and a small ``.dat`` sidecar (500 MiB at scale 1).
- ``camera``: the flaky regime's mix, per event one 20-60 MB ``.mp4`` and 2-6 ``.jpg`` of 100-300 KB
  (400 MB at scale 1): whole files bigger than a link that drops stays up for, and small ones.

Data is incompressible (Mersenne Twister bytes seeded per file, so any one file can be regenerated
alone) and every mtime is fixed in the past. A tree is regenerated only when its manifest (name,
seed, scale, file count, bytes) is missing or the files on disk do not match the plan.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
from typing import Dict, List, Tuple

KiB = 1024
MiB = 1024 * KiB
FIXED_MTIME = 1767225600  # 2026-01-01T00:00:00Z

Plan = List[Tuple[str, int]]  # (relative path with '/', size in bytes)


def plan_small(seed: int, scale: float) -> Plan:
    n_files = max(100, int(10_000 * scale))
    per_dir = -(-n_files // 100)
    out: Plan = []
    for n in range(n_files):
        d = n // per_dir
        out.append((f"d{d // 10}/e{d % 10}/f{n:05d}.dat", 4 * KiB))
    return out


def plan_large(seed: int, scale: float) -> Plan:
    if scale >= 1:
        return [(f"large_{i:02d}.bin", 128 * MiB) for i in range(int(8 * scale))]
    # a quick run: fewer and smaller files, still above the default multipart threshold
    count = max(2, int(8 * scale))
    return [(f"large_{i:02d}.bin", 32 * MiB) for i in range(count)]


def plan_mixed(seed: int, scale: float) -> Plan:
    total = int(500 * MiB * scale)
    r = random.Random(seed ^ 0x5EED)
    out: Plan = []
    acc = evt = 0
    while acc < total:
        cam = evt % 4 + 1
        day = 1 + (evt // 40) % 28
        hour = (evt * 7) % 24
        d = f"cam{cam}/2026-01-{day:02d}/{hour:02d}"
        items = [(f"{d}/evt{evt:04d}.mp4", r.randint(1 * MiB, 24 * MiB))]
        items += [(f"{d}/evt{evt:04d}_{j}.jpg", r.randint(50 * KiB, 2560 * KiB)) for j in range(r.randint(3, 10))]
        items.append((f"{d}/evt{evt:04d}.dat", r.randint(300, 48 * KiB)))
        for name, size in items:
            if acc >= total:
                break
            size = min(size, total - acc)
            out.append((name, size))
            acc += size
        evt += 1
    return out


def plan_camera(seed: int, scale: float) -> Plan:
    """A camera's day on a metered uplink: per event one 20-60 MB ``.mp4`` and 2-6 ``.jpg`` stills of
    100-300 KB (MB = 10^6), events until 400 MB at scale 1 (at least 2 events)."""
    total = int(400e6 * scale)
    r = random.Random(seed ^ 0xCA3E7A)
    out: Plan = []
    acc = evt = 0
    while acc < total or evt < 2:
        d = f"cam{evt % 2 + 1}/2026-01-{1 + evt // 24:02d}/{evt % 24:02d}"
        items = [(f"{d}/evt{evt:04d}_{j}.jpg", r.randint(100_000, 300_000)) for j in range(r.randint(2, 6))]
        items.append((f"{d}/evt{evt:04d}.mp4", r.randint(20_000_000, 60_000_000)))
        out += items
        acc += sum(s for _, s in items)
        evt += 1
    return out


PLANS = {"small": plan_small, "large": plan_large, "mixed": plan_mixed, "camera": plan_camera}


def _file_seed(seed: int, rel: str) -> int:
    return (seed << 32) ^ int.from_bytes(hashlib.sha256(rel.encode()).digest()[:4], "big")


def file_bytes(seed: int, rel: str, size: int) -> bytes:
    """The exact content of one planned file (used to byte-compare a sample of uploaded objects)."""
    return random.Random(_file_seed(seed, rel)).randbytes(size)


def _write(path: str, seed: int, rel: str, size: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    r = random.Random(_file_seed(seed, rel))
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(r.randbytes(n))
            left -= n
    os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def _on_disk(root: str) -> Dict[str, int]:
    seen: Dict[str, int] = {}
    for dp, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dp, name)
            seen[os.path.relpath(p, root).replace(os.sep, "/")] = os.path.getsize(p)
    return seen


def ensure(name: str, root: str, seed: int = 42, scale: float = 1.0) -> Tuple[str, Plan]:
    """Make sure workload ``name`` exists under ``root``; return its folder and plan."""
    plan = PLANS[name](seed, scale)
    folder = os.path.join(root, f"{name}-s{scale:g}")
    manifest = folder + ".manifest"
    line = f"name={name} seed={seed} scale={scale:g} files={len(plan)} bytes={sum(s for _, s in plan)}\n"
    if os.path.exists(manifest) and open(manifest).read() == line and _on_disk(folder) == dict(plan):
        return folder, plan
    shutil.rmtree(folder, ignore_errors=True)
    for rel, size in plan:
        _write(os.path.join(folder, *rel.split("/")), seed, rel, size)
    os.sync()
    with open(manifest, "w") as f:
        f.write(line)
    return folder, plan


def tiny_tree(root: str, count: int, size: int = 1, per_dir: int = 1000) -> None:
    """``count`` files of ``size`` bytes (0 or 1), ``per_dir`` to a folder: the daemon figures' trees."""
    body = b"x" * size
    for i in range(count):
        d = os.path.join(root, f"g{i // (per_dir * 100):03d}", f"h{(i // per_dir) % 100:03d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"t{i:07d}"), "wb") as f:
            if body:
                f.write(body)

"""The writer probe (src/s3_uploader/writers.py): read leases first, /proc as the fallback, and a
clear word about what it cannot see.

The lease tests point the probe at a fake procfs with no processes in it, so a "busy" answer can
only have come from the kernel's lease check, never from the /proc sweep.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from s3_uploader.writers import CAP_LEASE, CAP_SYS_PTRACE, WriterProbe

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="leases and /proc are Linux's")


def fake_proc(tmp_path: Path, cap_eff: int = 0, leases_enable: str = "1", mountinfo: str = "") -> Path:
    """A procfs with our own status (CapEff), fs.leases-enable, mountinfo, and no process to sweep."""
    proc = tmp_path / "proc"
    (proc / "self" / "fd").mkdir(parents=True, exist_ok=True)
    (proc / "self" / "status").write_text(f"Name:\tpython\nCapEff:\t{cap_eff:016x}\n")
    (proc / "sys" / "fs").mkdir(parents=True, exist_ok=True)
    (proc / "sys" / "fs" / "leases-enable").write_text(leases_enable + "\n")
    (proc / "self" / "mountinfo").write_text(mountinfo)
    return proc


def key(path: Path):
    st = os.stat(path)
    return str(path), st.st_dev, st.st_ino


def test_a_file_open_for_writing_is_busy_by_its_lease_and_free_once_closed(tmp_path):
    root = tmp_path / "inbox"
    root.mkdir()
    f = root / "log.txt"
    f.write_bytes(b"first")
    probe = WriterProbe(str(root), proc=str(fake_proc(tmp_path)), ttl=0)
    with open(f, "ab") as w:
        w.write(b" more")
        w.flush()
        assert probe.is_being_written(*key(f))
    assert not probe.is_being_written(*key(f))
    # read-only openers are not writers
    with open(f, "rb"):
        assert not probe.is_being_written(*key(f))


def test_the_probe_releases_its_lease_at_once_so_a_writer_opening_the_file_never_waits(tmp_path):
    # a lease left behind would make the next open for writing wait lease-break-time (45 s)
    root = tmp_path / "inbox"
    root.mkdir()
    f = root / "data.bin"
    f.write_bytes(b"x")
    probe = WriterProbe(str(root), proc=str(fake_proc(tmp_path)), ttl=0)
    for _ in range(200):
        assert not probe.is_being_written(*key(f))
        t0 = time.monotonic()
        with open(f, "ab") as w:
            w.write(b"y")
        assert time.monotonic() - t0 < 1.0


def test_a_writer_opening_the_file_while_probes_run_is_never_held_and_the_daemon_survives(tmp_path):
    # the kernel signals a lease holder when a writer opens the file; SIGIO (its default) would kill us
    root = tmp_path / "inbox"
    root.mkdir()
    f = root / "busy.bin"
    f.write_bytes(b"x")
    probe = WriterProbe(str(root), proc=str(fake_proc(tmp_path)), ttl=0)
    stop = threading.Event()
    slowest = [0.0]

    def writer() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            with open(f, "r+b"):
                pass
            slowest[0] = max(slowest[0], time.monotonic() - t0)

    t = threading.Thread(target=writer)
    t.start()
    try:
        # until both answers are seen (or 10 s): a fixed count of probes can miss the race on a busy box
        answers: set = set()
        deadline = time.monotonic() + 10
        probes = 0
        while (probes < 3000 or len(answers) < 2) and time.monotonic() < deadline:
            answers.add(probe.is_being_written(*key(f)))
            probes += 1
    finally:
        stop.set()
        t.join(10)
    assert answers == {True, False}  # both seen: the probes really raced the writer's opens
    assert slowest[0] < 1.0


def test_a_fifo_or_a_symlink_is_never_opened_through_and_never_blocks(tmp_path):
    root = tmp_path / "inbox"
    root.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    link = root / "link.txt"
    link.symlink_to(outside)
    fifo = root / "pipe"
    os.mkfifo(fifo)
    probe = WriterProbe(str(root), proc=str(fake_proc(tmp_path)), ttl=0)
    with open(outside, "ab"):  # a writer outside the tree: not ours to look at, through a link or not
        st = os.stat(outside)
        assert not probe.is_being_written(str(link), st.st_dev, st.st_ino)
    st = os.lstat(fifo)
    t0 = time.monotonic()
    assert not probe.is_being_written(str(fifo), st.st_dev, st.st_ino)
    assert time.monotonic() - t0 < 1.0


def test_a_file_replaced_since_the_callers_stat_is_reported_busy_to_be_looked_at_again(tmp_path):
    root = tmp_path / "inbox"
    root.mkdir()
    f = root / "a.txt"
    f.write_bytes(b"old")
    path, dev, ino = key(f)
    (root / "new.txt").write_bytes(b"new")
    os.replace(root / "new.txt", f)
    probe = WriterProbe(str(root), proc=str(fake_proc(tmp_path)), ttl=0)
    assert probe.is_being_written(path, dev, ino)


def test_on_nfs_and_smb_the_probe_does_not_ask_for_leases_and_says_so_once(tmp_path, caplog):
    # NFSv4 and SMB refuse a read lease without a delegation: read as "busy", a file would wait forever
    root = tmp_path / "inbox"
    root.mkdir()
    f = root / "a.txt"
    f.write_bytes(b"a")
    st = os.stat(f)
    line = (f"36 25 {os.major(st.st_dev)}:{os.minor(st.st_dev)} / {root} rw,relatime shared:1 - nfs4 "
            f"server:/export rw,vers=4.2\n")
    probe = WriterProbe(str(root), proc=str(fake_proc(tmp_path, mountinfo=line)), ttl=0)
    with open(f, "ab"):
        # the fake /proc holds no process: without a lease nothing can say busy
        assert not probe.is_being_written(*key(f))
        assert not probe.is_being_written(*key(f))
    assert "the watched directory is on nfs4" in probe.blind_spot()
    said = [r.getMessage() for r in caplog.records if "no file leases on the filesystem" in r.getMessage()]
    assert len(said) == 1 and "(nfs4)" in said[0], said
    local = WriterProbe(str(root), proc=str(fake_proc(tmp_path / "2")), ttl=0)
    with open(f, "ab"):
        assert local.is_being_written(*key(f))


def test_the_probe_says_when_it_is_blind_to_other_users_and_what_to_change(tmp_path):
    root = tmp_path / "inbox"
    root.mkdir()

    def probe(caps: int, leases: str = "1") -> WriterProbe:
        return WriterProbe(str(root), proc=str(fake_proc(tmp_path / f"{caps}-{leases}", caps, leases)))

    blind = probe(0).blind_spot()
    assert blind is not None and "cannot see other users' processes" in blind
    assert "AmbientCapabilities=CAP_LEASE" in blind and "CapabilityBoundingSet=CAP_LEASE" in blind
    assert probe(0).method() == "file leases on files this user owns, /proc for the rest"
    assert probe(1 << CAP_LEASE).blind_spot() is None
    assert probe(1 << CAP_LEASE).method().startswith("file leases (CAP_LEASE")
    assert probe(1 << CAP_SYS_PTRACE).blind_spot() is None
    off = probe(1 << CAP_LEASE, leases="0")
    assert "sysctl fs.leases-enable=1" in off.blind_spot()
    assert off.method() == "/proc"


def test_a_fresh_look_sees_a_writer_that_opened_the_file_after_the_last_proc_sweep(tmp_path):
    """Found by review: cleanup's second look (after the quarantine rename) reused the /proc sweep
    of its first look, up to 0.5 s old, so a writer that opened the file in between was missed."""
    root = tmp_path / "root"
    root.mkdir()
    p = root / "clip.mp4"
    p.write_bytes(b"x")
    st = os.stat(p)
    now = [100.0]
    probe = WriterProbe(str(root), ttl=0.5, clock=lambda: now[0], leases=False)  # /proc decides
    assert probe.is_being_written(str(p), st.st_dev, st.st_ino) is False
    # a writer (another process: our own descriptors are never a writer) opens it within the sweep's life
    writer = subprocess.Popen([sys.executable, "-c", "import sys; f = open(sys.argv[1], 'ab'); print('open', flush=True); "
                               "sys.stdin.read()", str(p)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        assert probe.is_being_written(str(p), st.st_dev, st.st_ino) is False  # the cached sweep
        assert probe.is_being_written(str(p), st.st_dev, st.st_ino, fresh=True) is True
    finally:
        writer.communicate("", timeout=30)


def test_the_lease_is_asked_by_descriptor_from_the_root_and_a_link_inside_the_tree_still_answers(tmp_path, monkeypatch):
    # a file below the root is opened from the root's descriptor (openat2 where Linux has it), with
    # no resolving of the path; a folder link that stays inside the tree is still resolved and
    # answered as before, one that leads out is never opened through
    import s3_uploader.writers as writers
    root = tmp_path / "inbox"
    (root / "cam").mkdir(parents=True)
    f = root / "cam" / "a.bin"
    f.write_bytes(b"x")
    (root / "alias").symlink_to(root / "cam", target_is_directory=True)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "a.bin"
    out.write_bytes(b"x")
    (root / "away").symlink_to(tmp_path / "out", target_is_directory=True)
    resolved = []
    real_realpath = os.path.realpath
    monkeypatch.setattr(writers.os.path, "realpath", lambda p: resolved.append(p) or real_realpath(p))
    probe = WriterProbe(str(root), proc=str(fake_proc(tmp_path)), ttl=0)
    resolved.clear()
    _, dev, ino = key(f)
    with open(f, "ab"):
        assert probe.is_being_written(str(f), dev, ino)
        assert resolved == []  # below the root: by descriptor, nothing resolved
        assert probe.is_being_written(str(root / "alias" / "a.bin"), dev, ino)  # the link: resolved, still seen
        assert resolved == [str(root / "alias" / "a.bin")]
    assert not probe.is_being_written(str(f), dev, ino)
    _, odev, oino = key(out)
    with open(out, "ab"):  # outside: never opened, and the (empty) /proc sees no writer
        assert not probe.is_being_written(str(root / "away" / "a.bin"), odev, oino)

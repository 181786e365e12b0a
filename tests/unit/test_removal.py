"""cleanup.removal on its own: the act on a proven file, and what an interrupted pass left."""
from __future__ import annotations

import hashlib
import threading

from s3_uploader import tree
from s3_uploader.cleanup.decision import FILE_MODIFIED, CleanupSettings, LocalState
from s3_uploader.cleanup.removal import META_QUARANTINE, Removal
from s3_uploader.cleanup.status import PassResult
from s3_uploader.store import Store
from s3_uploader.version import signature_of


def removal(root, store, **seams) -> Removal:
    defaults = dict(stop=threading.Event(), is_busy=lambda rel: False,
                    is_being_written=lambda path, dev, ino, fresh: False, at=lambda moment, rel: None,
                    requeue=lambda *a: None)
    defaults.update(seams)
    return Removal(str(root), store, lambda: CleanupSettings(delete_after=1.0), **defaults)


def uploaded(store: Store, root, rel: str, data: bytes) -> LocalState:
    p = root / rel
    p.write_bytes(data)
    size, mtime_ns, inode = signature_of(p.lstat())
    store.discover(rel, rel, size, mtime_ns, inode)
    store.start_upload(rel, size, mtime_ns, inode)
    store.finish_upload(rel, size, mtime_ns, inode, hashlib.md5(data).hexdigest(), hashlib.md5(data).hexdigest())
    return LocalState.from_lstat(p.lstat())


def test_a_proven_file_is_deleted_and_its_row_marked_deleted(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    with Store(tmp_path / "s.db") as store:
        local = uploaded(store, root, "a.bin", b"abc")
        res = PassResult(at=0.0)
        removal(root, store).remove(store.get("a.bin"), local, res, CleanupSettings(delete_after=1.0))
        assert not (root / "a.bin").exists() and store.get("a.bin").state == "deleted"
        assert (res.freed_files, res.freed_bytes) == (1, 3)


def test_a_file_changed_once_quarantined_gets_its_name_back_and_is_queued_again(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    requeued = []

    def rewrite(moment: str, rel: str) -> None:
        if moment == "quarantined":
            (q,) = [p for p in root.iterdir() if tree.is_quarantine_name(p.name)]
            q.write_bytes(b"abcd")

    with Store(tmp_path / "s.db") as store:
        local = uploaded(store, root, "a.bin", b"abc")
        res = PassResult(at=0.0)
        removal(root, store, at=rewrite, requeue=lambda rec, now, d, res: requeued.append((rec.rel, d.reason, now.size))
                ).remove(store.get("a.bin"), local, res, CleanupSettings(delete_after=1.0))
        assert (root / "a.bin").read_bytes() == b"abcd" and store.get("a.bin").state == "uploaded"
        assert requeued == [("a.bin", FILE_MODIFIED, 4)]


def test_a_file_an_interrupted_pass_left_in_quarantine_gets_its_name_back(tmp_path):
    root = tmp_path / "tree"
    (root / "cam").mkdir(parents=True)
    with Store(tmp_path / "s.db") as store:
        uploaded(store, root, "cam/a.bin", b"abc")
        qname = tree.quarantine_name("a.bin")
        (root / "cam" / "a.bin").rename(root / "cam" / qname)
        store.set_meta(META_QUARANTINE, '["cam"]')
        r = removal(root, store)
        r.recover()
        assert sorted(p.name for p in (root / "cam").iterdir()) == ["a.bin"]
        assert r.leftover == set() and store.meta(META_QUARANTINE) == "[]"

"""store.machine: the guarded UPDATE every move is, run against a real database."""
from __future__ import annotations

import pytest

from s3_uploader.store import SOURCES, STATES, Store
from s3_uploader.store.machine import move_sql


@pytest.mark.parametrize("dst", STATES)
def test_a_move_changes_a_row_only_from_a_state_the_machine_allows(tmp_path, dst):
    with Store(tmp_path / "s.db") as store:
        sql, sources = move_sql(dst, ("last_error",))
        assert sources == SOURCES[dst]
        for i, src in enumerate(STATES):
            rel = f"f{i}"
            # a keyless row may only be parked, deleted or archived (a CHECK): give every row a key
            store.db.write("INSERT INTO files(path, dir, key, state, size, mtime_ns, inode, discovered_at, updated_at) "
                           "VALUES(?, '', ?, ?, 1, 1, 1, 0, 0)", (rel.encode(), rel, src))
            moved = store.db.write(sql, (dst, 5.0, "why", rel.encode(), *sources)).rowcount
            row = store.get(rel)
            assert row is not None
            assert (moved == 1) == (src in SOURCES[dst])
            assert (row.state, row.last_error) == ((dst, "why") if moved else (src, None))

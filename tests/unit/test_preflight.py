"""Start-up checks and recovery, shared by run/once and check: the same one-line messages, and what
each run mode does when the endpoint does not answer."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from s3_uploader.config import parse_config
from s3_uploader.keys import Filters, KeyMaker
from s3_uploader.preflight import StartupError, check_access, recover, watch_dir_problem
from s3_uploader.remote import TLS_CODE, MemoryRemote, RemoteError
from s3_uploader.remote.errors import s3_error
from s3_uploader.runmode import RunMode
from s3_uploader.store import Store


def test_the_watch_directory_problems_are_one_line_each(tmp_path):
    assert watch_dir_problem(tmp_path) is None
    assert watch_dir_problem(tmp_path / "nope") == f"Watch directory does not exist: {tmp_path / 'nope'}"
    (tmp_path / "f").write_text("x")
    assert watch_dir_problem(tmp_path / "f") == f"Watch directory is not a directory: {tmp_path / 'f'}"


class Answering(MemoryRemote):
    """A bucket whose access check fails with ``code`` (None: it answers)."""

    def __init__(self, code: Any = None):
        super().__init__()
        self.code = code

    def check_access(self) -> None:
        if self.code is not None:
            if self.code == "EndpointConnectionError":  # no answer at all: what boto.py makes of it
                raise RemoteError(f"{self.code} from the server", self.code, "network")
            raise s3_error(self.code, f"{self.code} from the server")


def _cfg(tmp_path: Any) -> Any:
    return parse_config(f"[watch]\ndirectory_to_watch = {tmp_path}\n"
                        "[s3]\nbucket = b\nendpoint_url = http://127.0.0.1:9\n"
                        f"[daemon]\ndb_path = {tmp_path / 's.db'}\n")


def test_an_endpoint_that_does_not_answer_lets_a_service_start_but_not_a_single_pass(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    down = Answering("EndpointConnectionError")
    with caplog.at_level(logging.WARNING):
        assert check_access(cfg, down, RunMode.SERVICE) == "EndpointConnectionError from the server"
    assert "S3 endpoint http://127.0.0.1:9 is not answering" in caplog.text
    with pytest.raises(StartupError) as e:
        check_access(cfg, down, RunMode.ONCE)
    assert str(e.value) == ("S3 bucket b does not exist or you don't have access (S3 endpoint http://127.0.0.1:9 "
                            "is not answering: EndpointConnectionError from the server)")
    assert check_access(cfg, Answering(), RunMode.ONCE) is None


@pytest.mark.parametrize("mode", list(RunMode))
def test_a_wrong_bucket_or_an_untrusted_endpoint_stops_either_mode(tmp_path, mode):
    cfg = _cfg(tmp_path)
    with pytest.raises(StartupError) as e:
        check_access(cfg, Answering("AccessDenied"), mode)
    assert str(e.value) == "S3 bucket b does not exist or you don't have access (AccessDenied from the server)"
    with pytest.raises(StartupError) as e:
        check_access(cfg, Answering(TLS_CODE), mode)
    assert str(e.value) == f"{TLS_CODE} from the server"  # the TLS line is said as it is, not as "no bucket"


@pytest.mark.parametrize("mode, next_attempt_at", [(RunMode.ONCE, 2000.0), (RunMode.SERVICE, 1e12)])
def test_recovery_makes_parked_files_due_now_only_in_a_single_pass(tmp_path, mode, next_attempt_at):
    cfg = _cfg(tmp_path)
    with Store(cfg.daemon.db_path, clock=lambda: 1000.0) as store:
        store.park_new("p.txt", 3, 1, 1, "internal", "a bug", 1e12)
        recover(cfg, store, MemoryRemote(), KeyMaker(""), Filters(), mode, wall=lambda: 2000.0)
        row = store.get("p.txt")
        assert row is not None and row.state == "parked" and row.next_attempt_at == next_attempt_at

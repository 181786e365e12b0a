"""Containment: an error while handling one file stays with that file; the daemon goes on.

Each test plants a bug that fires for one file only (``bad.txt``) at one per-file step of the daemon,
then runs ``once`` in-process against the real S3-compatible server. The other files must all
arrive, the bad one must be set aside with its error (a row parked or failed with kind
``internal``, so ``status`` shows it and the exit code says a file is not in S3), the bug must be
logged with its traceback, and no thread may die ("Thread X failed").
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict

import pytest
from helpers import list_keys, make_files

from s3_uploader import cleanup as cleanup_mod
from s3_uploader import scheduler as scheduler_mod
from s3_uploader.config import load_config
from s3_uploader.daemon import Daemon
from s3_uploader.runmode import RunMode
from s3_uploader.keys import KeyMaker
from s3_uploader.scanner import Scanner
from s3_uploader.store import Store
from s3_uploader.writers import WriterProbe

GOOD = [f"good-{i}.txt" for i in range(6)]


class Bug(Exception):
    """The planted bug (an ordinary exception, as a real bug would raise)."""


def _is_bad(value: Any) -> bool:
    return isinstance(value, str) and value.rsplit("/", 1)[-1] == "bad.txt"


def _raise_for_bad(cls_or_mod: Any, name: str, monkeypatch, pick: Callable[..., Any]) -> None:
    """Wrap ``cls_or_mod.name`` so that it raises Bug when ``pick(*args)`` is the bad file."""
    real = getattr(cls_or_mod, name)

    def wrapper(*args: Any, **kw: Any) -> Any:
        if _is_bad(pick(*args)):
            raise Bug(f"planted in {name}")
        return real(*args, **kw)

    monkeypatch.setattr(cls_or_mod, name, wrapper)


def _bad_row(rows: Any) -> Any:
    return next((r[0] for r in rows if _is_bad(r[0])), None)


# step -> how to plant the bug (monkeypatch), and the transport it runs with
STEPS: Dict[str, Callable[[Any], None]] = {
    # the scanner's diff computes a new file's key
    "scanning": lambda mp: _raise_for_bad(KeyMaker, "key_for", mp, lambda self, rel, mtime: rel),
    # the scheduler's stability check asks whether a writer holds it
    "checking": lambda mp: _raise_for_bad(WriterProbe, "is_being_written", mp, lambda self, path, dev, ino: path),
    # the scheduler makes its job (the key check)
    "making the job": lambda mp: _raise_for_bad(scheduler_mod, "key_problem", mp, lambda key: key),
    # an upload worker records its upload (boto3 transport: no asyncio sender)
    "recording (worker)": lambda mp: _raise_for_bad(Store, "finish_upload", mp, lambda self, rel, *a: rel),
    # the asyncio sender's batch of answers is recorded (obstore transport)
    "recording (sender)": lambda mp: _raise_for_bad(Store, "record_sent", mp, lambda self, rows: _bad_row(rows)),
}


def _run_once(workspace, transport: str, **cleanup: Any) -> Daemon:
    workspace.config(s3={"transport": transport},
                     upload={"max_retries": 2, "retry_backoff_base": "0.05s", "retry_backoff_max": "0.1s"},
                     cleanup=cleanup)
    d = Daemon(load_config(workspace.config_path), mode=RunMode.ONCE)
    d.exit_code = d.run()
    return d


@pytest.mark.parametrize("step", list(STEPS))
def test_a_bug_with_one_file_at_any_step_sets_that_file_aside_and_every_other_file_goes(
        step, workspace, aws_env, s3_client, monkeypatch, caplog):
    files = make_files(workspace.inbox, [(name, name.encode()) for name in GOOD + ["bad.txt"]])
    STEPS[step](monkeypatch)
    transport = "boto3" if step == "recording (worker)" else "obstore"
    with caplog.at_level(logging.DEBUG, logger="s3_uploader"):
        d = _run_once(workspace, transport)
    assert not [r for r in caplog.records if r.getMessage().startswith("Thread ")], "a thread died"
    assert set(list_keys(s3_client, workspace.bucket)) >= set(GOOD), "the other files did not all go"
    assert d.exit_code == 1, "bad.txt is not in S3 and the exit code must say so"
    with Store(workspace.state / "state.db", readonly=True) as st:
        bad = st.get("bad.txt")
        assert bad is not None and bad.state == "parked" and bad.error_kind == "internal", bad
        assert "Bug: planted in" in bad.last_error
        assert all(st.get(name).state == "uploaded" for name in GOOD)
    said = [r for r in caplog.records if r.levelno >= logging.ERROR and "Internal error while" in r.getMessage()]
    assert said and said[0].exc_info is not None and "bad.txt" in said[0].getMessage(), "logged with its traceback"
    assert len(said) == 1, "said once; its repeats (the retries) go to DEBUG"
    assert files["bad.txt"] == b"bad.txt"


def test_a_bug_with_one_entry_of_a_folder_listing_skips_that_entry_and_the_walk_goes_on(
        workspace, aws_env, s3_client, monkeypatch, caplog):
    make_files(workspace.inbox, [(name, name.encode()) for name in GOOD + ["bad.txt"]])
    _raise_for_bad(Scanner, "_classify", monkeypatch, lambda self, entry, rel, *a: rel)
    with caplog.at_level(logging.INFO, logger="s3_uploader"):
        d = _run_once(workspace, "obstore")
    assert not [r for r in caplog.records if r.getMessage().startswith("Thread ")], "a thread died"
    assert set(list_keys(s3_client, workspace.bucket)) == set(GOOD)
    said = [r for r in caplog.records if "Internal error while scanning bad.txt" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is not None
    assert d.exit_code == 0


def test_a_bug_with_one_cleanup_candidate_keeps_that_file_and_the_pass_goes_on(
        workspace, aws_env, s3_client, monkeypatch, caplog):
    make_files(workspace.inbox, [(name, name.encode()) for name in GOOD + ["bad.txt"]])
    _raise_for_bad(cleanup_mod, "decide", monkeypatch, lambda record, *a, **kw: record.rel)
    with caplog.at_level(logging.INFO, logger="s3_uploader"):
        d = _run_once(workspace, "obstore", min_free_space="99%")  # every proven file, whatever its age
    assert d.exit_code == 0
    assert set(list_keys(s3_client, workspace.bucket)) == set(GOOD) | {"bad.txt"}
    left = sorted(p.name for p in workspace.inbox.iterdir())
    assert left == ["bad.txt"], "every other proven file is deleted; the bad one is kept"
    assert "Cleanup pass failed" not in caplog.text
    said = [r for r in caplog.records if "Cleanup: internal error with bad.txt" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is not None

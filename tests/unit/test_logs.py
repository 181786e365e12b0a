"""Logs: timestamped text lines, or one JSON object per line; a file log that rotates by size."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from s3_uploader import logs


@pytest.fixture
def package_logger():
    """Restore the package logger after a test reconfigures it (other tests rely on propagation)."""
    logger = logging.getLogger(logs.ROOT)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    for h in saved[0]:
        logger.addHandler(h)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_text_lines_start_with_a_timestamp_and_the_level(package_logger):
    out = io.StringIO()
    logs.setup("INFO", "text", stream=out)
    logs.get("test").info("Uploading %s attempt %d", "a.txt", 1)
    logs.get("test").debug("not shown at INFO")
    logs.flush()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO    Uploading a\.txt attempt 1\n", out.getvalue())


def test_info_lines_are_written_in_batches_and_a_warning_writes_them_at_once_in_order(package_logger,
                                                                                     monkeypatch):
    out = io.StringIO()
    logs.setup("INFO", "text", stream=out)
    log = logs.get("test")
    log.info("one")
    log.info("two")
    assert out.getvalue() == ""  # batched: one write for many lines
    log.warning("three")
    assert [line.split()[-1] for line in out.getvalue().splitlines()] == ["one", "two", "three"]
    log.info("four")
    logs.flush_pending()
    assert "four" not in out.getvalue()  # not due yet
    now = logs.time.monotonic()
    monkeypatch.setattr(logs.time, "monotonic", lambda: now + logs.FLUSH_SECONDS)
    logs.flush_pending()  # the daemon's tick: a batch older than FLUSH_SECONDS goes out
    assert out.getvalue().splitlines()[-1].endswith("four")


def test_per_file_lines_are_the_lines_logger_info_writes_through_every_route(package_logger, tmp_path):
    """logs.per_file (the three lines logged per upload) must write exactly what logger.info would,
    to the same handlers: text to stderr; file plus warnings-only stderr; JSON; a filter added."""
    log = logs.get("test")

    def both(msg, *args):
        logs.per_file(log, msg, *args)
        log.info(msg, *args)
        logs.flush()

    out = io.StringIO()
    logs.setup("INFO", "text", stream=out)
    both("File ready (%d bytes): %s", 12, "cam/a\nb.jpg")  # a control character is escaped alike
    fast, slow = out.getvalue().splitlines()
    assert fast[20:] == slow[20:] == "INFO    File ready (12 bytes): cam/a\\nb.jpg" and fast[:19] <= slow[:19]
    logs.setup("WARNING", "text", stream=out)
    logs.per_file(log, "not at WARNING")
    logs.flush()
    assert "not at WARNING" not in out.getvalue()

    err = io.StringIO()
    logs.setup("INFO", "text", log_file=str(tmp_path / "u.log"), stream=err)
    both("Uploading %s attempt %d", "a.txt", 1)
    lines = (tmp_path / "u.log").read_text().splitlines()
    assert [ln[20:] for ln in lines] == ["INFO    Uploading a.txt attempt 1"] * 2 and err.getvalue() == ""

    out = io.StringIO()
    logs.setup("INFO", "json", stream=out)
    both("Successfully uploaded %s (%d bytes in %.3f s)", "k", 3, 0.5)
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [o["msg"] for o in objs] == ["Successfully uploaded k (3 bytes in 0.500 s)"] * 2
    assert objs[0]["logger"] == objs[1]["logger"] == "s3_uploader.test"

    out = io.StringIO()
    logs.setup("INFO", "text", stream=out)
    package_logger.handlers[0].addFilter(lambda r: "secret" not in r.getMessage())
    both("a %s line", "secret")
    assert out.getvalue() == ""  # a filter someone added is honoured: per_file took logger.info


def test_json_format_writes_one_object_per_line_even_for_multiline_messages(package_logger):
    out = io.StringIO()
    logs.setup("DEBUG", "json", stream=out)
    log = logs.get("test")
    log.info("first")
    log.warning("two\nlines")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["level"] for r in records] == ["INFO", "WARNING", "ERROR"]
    assert records[1]["msg"] == "two\nlines"
    assert "ValueError: boom" in records[2]["exc"]
    assert all(r["logger"] == "s3_uploader.test" and r["ts"].endswith("Z") for r in records)


def test_level_and_format_can_change_while_running(package_logger):
    out = io.StringIO()
    logs.setup("INFO", "text", stream=out)
    log = logs.get("test")
    log.debug("hidden")
    logs.set_level("DEBUG")
    logs.set_format("json")
    log.debug("shown")
    logs.flush()
    assert json.loads(out.getvalue().splitlines()[-1])["msg"] == "shown"
    assert "hidden" not in out.getvalue()


def test_the_log_file_rotates_at_its_size_and_keeps_the_configured_count(package_logger, tmp_path):
    path = tmp_path / "s3-uploader.log"
    err = io.StringIO()
    logs.setup("INFO", "text", str(path), max_bytes=1000, backups=2, stream=err)
    log = logs.get("test")
    for i in range(100):
        log.info("line %03d %s", i, "x" * 40)
    log.warning("a warning also reaches stderr")  # and writes the INFO lines before it
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["s3-uploader.log", "s3-uploader.log.1", "s3-uploader.log.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    assert "line 099" in path.read_text()
    assert "line 000" not in "".join(p.read_text() for p in tmp_path.iterdir()), "older files are dropped"
    assert err.getvalue().count("\n") == 1 and "a warning also reaches stderr" in err.getvalue()

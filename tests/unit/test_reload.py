"""Hot reload: edits to config.ini change a running daemon's behaviour, or are refused whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3_uploader.config import ConfigError, parse_config
from s3_uploader.reload import Reloader, merge

BASE = """
[watch]
directory_to_watch = /data/in
exclude = *.tmp
[s3]
bucket = b1
[daemon]
log_level = INFO
"""


def cfg(text: str, source: Path = None):
    return parse_config(text, source)


def test_merge_takes_reloadable_values_and_keeps_restart_only_ones():
    running = cfg(BASE)
    loaded = cfg(BASE.replace("*.tmp", "*.part").replace("b1", "b2").replace("INFO", "DEBUG"))
    new, applied, kept = merge(running, loaded)
    assert {(o.section, o.key) for o in applied} == {("watch", "exclude"), ("daemon", "log_level")}
    assert [(o.section, o.key) for o in kept] == [("s3", "bucket")]
    assert new.watch.exclude == ("*.part",)
    assert new.daemon.log_level == "DEBUG"
    assert new.s3.bucket == "b1"  # the running value
    assert running.watch.exclude == ("*.tmp",), "the running config is never modified"


def test_merge_rejects_a_mix_that_breaks_a_rule_across_keys():
    running = cfg(BASE)
    # valid on its own (the file moves the directory too), but the directory change needs a
    # restart, and the new archive folder is inside the directory that keeps running
    loaded = cfg(BASE.replace("/data/in", "/data/new") + "[cleanup]\ncleanup_action = archive\n"
                 "archive_directory = /data/in/archive\n")
    with pytest.raises(ConfigError) as exc:
        merge(running, loaded)
    assert "archive_directory" in str(exc.value)
    assert "restart-only" in str(exc.value)


def test_the_reloader_waits_for_a_save_to_settle_then_applies_it(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text(BASE)
    running = [cfg(BASE, path)]
    applied = []
    r = Reloader(path, lambda: running[0], lambda new, changed: (running.__setitem__(0, new), applied.append(changed)))
    r.tick(0.0)
    r.tick(1.0)  # the first settled look re-reads the file: it matches, nothing to apply
    assert applied == []
    path.write_text(BASE.replace("*.tmp", "*.partial"))
    r.tick(2.0)  # changed since the last look: maybe half written, wait one more poll
    assert applied == []
    r.tick(2.5)  # not due yet
    r.tick(3.0)
    assert [[o.key for o in c] for c in applied] == [["exclude"]]
    assert running[0].watch.exclude == ("*.partial",)
    r.tick(4.0)
    r.tick(5.0)
    assert len(applied) == 1, "an unchanged file is not applied again"


def test_the_reloader_keeps_the_running_config_when_the_file_is_invalid(tmp_path, caplog):
    path = tmp_path / "config.ini"
    path.write_text(BASE)
    running = cfg(BASE, path)
    calls = []
    r = Reloader(path, lambda: running, lambda new, changed: calls.append(new))
    path.write_text(BASE + "[upload]\nmax_retries = -3\nretry_backoff_base = soon\n")
    r.request()
    r.tick(0.0)
    assert calls == []
    errors = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("Config error: ")]
    assert len(errors) == 2
    assert any("max_retries = '-3'" in e for e in errors)
    assert any("retry_backoff_base = 'soon'" in e for e in errors)


class _Target:
    """A ReloadTarget that records what a reload asked of it."""

    def __init__(self) -> None:
        self.calls: list = []
        self.limiter = None

    def use_config(self, new) -> None:
        self.calls.append("use_config")

    def use_watch_settings(self, cfg) -> None:
        self.calls.append("use_watch_settings")

    def request_rescan(self) -> None:
        self.calls.append("request_rescan")

    def wake_scheduler(self) -> None:
        self.calls.append("wake_scheduler")


@pytest.mark.parametrize("edit", ["[upload]\norder = newest\n", "[upload]\npriority = *.jpg\n"])
def test_a_new_order_or_priority_is_applied_live_with_a_rescan_that_hands_the_backlog_on_again(edit):
    from s3_uploader.reload import apply_config
    running = cfg(BASE)
    new, applied, kept = merge(running, cfg(BASE + edit))
    assert [(o.section, o.key) for o in applied] in ([("upload", "order")], [("upload", "priority")]) and not kept
    target = _Target()
    apply_config(target, new, applied)  # type: ignore[arg-type]
    assert target.calls == ["use_config", "request_rescan", "wake_scheduler"]
    assert (new.upload.order, new.upload.priority) in (("newest", ()), ("oldest", ("*.jpg",)))

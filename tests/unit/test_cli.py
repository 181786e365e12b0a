"""The command line as users meet it: exit codes and one clear line per problem."""

from __future__ import annotations

import signal

from helpers import cli, write_config

from s3_uploader.cli import install_signals


def test_a_bad_config_lists_every_problem_and_exits_2(tmp_path):
    cfg = write_config(tmp_path / "config.ini", {
        "watch": {"directory_to_watch": tmp_path, "stable_seconds": "later"},
        "s3": {"bucket": "b-1", "storage_class": "COLDEST"},
        "upload": {"upload_workers": 0}})
    r = cli("run", "-c", str(cfg))
    assert r.returncode == 2
    assert "[watch] stable_seconds = 'later': expected a duration" in r.stderr
    assert "[s3] storage_class = 'COLDEST': expected one of" in r.stderr
    assert "[upload] upload_workers = '0': expected auto, or a whole number 1 to 512" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_missing_config_file_exits_2_naming_it(tmp_path):
    r = cli("once", "-c", str(tmp_path / "missing.ini"))
    assert r.returncode == 2 and "missing.ini: config file not found" in r.stderr


def test_usage_errors_exit_2(tmp_path):
    assert cli("explode").returncode == 2
    assert cli("status", "--bogus").returncode == 2


def test_status_without_a_database_says_so(tmp_path):
    cfg = write_config(tmp_path / "config.ini", {"watch": {"directory_to_watch": tmp_path},
                                                  "s3": {"bucket": "bkt"}, "daemon": {"db_path": tmp_path / "s.db"}})
    r = cli("status", "-c", str(cfg))
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_python_dash_m_and_version():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("s3-uploader ")


def test_example_config_command_prints_the_documented_file(tmp_path):
    r = cli("example-config")
    assert r.returncode == 0 and "[watch]" in r.stdout and "directory_to_watch" in r.stdout


def test_a_stop_signal_handler_only_records_the_signal():
    calls = []

    class Recorder:  # anything but signal_stop would be the handler doing work (and taking locks)
        def signal_stop(self, signum):
            calls.append(("signal_stop", signum))

        def request_reload(self):
            calls.append(("request_reload", None))

        def __getattr__(self, name):
            calls.append((name, None))
            return lambda *a, **kw: None

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        install_signals(Recorder())
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)
        handler(signal.SIGTERM, None)
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert calls == [("signal_stop", signal.SIGTERM), ("signal_stop", signal.SIGTERM), ("signal_stop", signal.SIGINT)]

"""The outage state machine on its own, with a fake clock: when an outage starts, what is logged
while it lasts (one summary per interval), and how it ends."""
from __future__ import annotations

import logging

from helpers import Clock

from s3_uploader.outage import Outage
from s3_uploader.retry import Failure

NET = Failure("network", "Could not connect to the endpoint URL")


def make(changes=None):
    clock = Clock()
    out = Outage("http://s3.example:9000", clock=clock, wall=lambda: 1.7e9 + clock.t, waiting=lambda: 1234,
                 on_change=(changes.append if changes is not None else (lambda s: None)), summary_every=300.0)
    return out, clock


def lines(caplog, level=logging.WARNING):
    return [r.getMessage() for r in caplog.records if r.name == "s3_uploader.outage" and r.levelno == level]


def test_three_endpoint_failures_in_a_row_start_an_outage_with_one_warning_and_the_rest_are_quiet(caplog):
    caplog.set_level(logging.DEBUG)
    changes = []
    out, _clock = make(changes)
    assert out.failed(NET) is False and out.failed(NET) is False  # a blip is each file's own line
    assert not out.down
    assert out.failed(NET) is True  # the third starts it
    assert out.down and out.outages == 1
    for _ in range(1000):
        assert out.failed(Failure("throttled", "SlowDown")) is True
    warnings = lines(caplog)
    assert len(warnings) == 1
    assert "S3 endpoint http://s3.example:9000 is not answering (network: Could not connect" in warnings[0]
    assert "1234 file(s) wait" in warnings[0]
    assert len(changes) == 1 and changes[0]["endpoint"] == "http://s3.example:9000"
    assert out.state()["failures"] == 1003


def test_a_success_between_failures_means_no_outage_and_other_kinds_never_start_one():
    out, _ = make()
    for _ in range(10):
        out.failed(NET)
        out.failed(NET)
        out.succeeded()
    for kind in ("auth", "local", "invalid", "no_bucket"):
        for _ in range(5):
            assert out.failed(Failure(kind, "x")) is False
    assert not out.down and out.outages == 0


def test_while_it_lasts_one_summary_per_interval_and_one_info_line_when_it_ends(caplog):
    caplog.set_level(logging.DEBUG)
    changes = []
    out, clock = make(changes)
    for _ in range(3):
        out.failed(NET)
    summaries = 0
    for _ in range(60 * 24):  # a day, a tick every minute, failures all along
        clock.t += 60
        out.failed(NET)
        out.tick()
    summaries = [m for m in lines(caplog) if "still not answering" in m]
    assert len(summaries) == 60 * 24 * 60 // 300  # one every 5 minutes, not one per failure
    assert "still not answering after 5m00s" in summaries[0]
    clock.t += 30
    out.succeeded()
    infos = lines(caplog, logging.INFO)
    assert len(infos) == 1 and "answers again after 24h00m" in infos[0], infos
    assert changes[-1] is None and not out.down
    out.tick()
    out.succeeded()
    assert len(lines(caplog, logging.INFO)) == 1


def test_an_endpoint_found_down_at_start_is_an_outage_from_the_first_moment():
    changes = []
    out, _ = make(changes)
    out.begin("network: connection refused")
    assert out.down and out.failed(NET) is True
    assert changes and changes[0]["error"] == "network: connection refused"

"""How a run ends and what it keeps running: ``s3-uploader run`` (a service) or ``s3-uploader once``.

One value, :class:`RunMode`, is given to the parts that differ between the two, and each asks it
the one question it has (``mode.single_pass``, ``mode.patient``...), so the reason for a difference
is written once, here, instead of an ``if once`` in every module.
"""
from __future__ import annotations

import enum


class RunMode(enum.Enum):
    """``SERVICE`` runs until stopped; ``ONCE`` uploads the tree as it is now and exits."""

    SERVICE = "daemon"
    ONCE = "once"

    @property
    def single_pass(self) -> bool:
        """One full scan, no filesystem events, and a stop (after one cleanup pass) when nothing is
        left to do; the exit code then says whether every file found is in S3."""
        return self is RunMode.ONCE

    @property
    def serves(self) -> bool:
        """The parts of a long run: filesystem events, the cleanup thread, metrics, hot reload,
        systemd notifications."""
        return self is RunMode.SERVICE

    @property
    def patient(self) -> bool:
        """Failures that say nothing about the file (auth, outage) are waited out, not counted
        against ``max_retries``; a run that must end gives up on them (see :func:`retry.decide_retry`)."""
        return self is RunMode.SERVICE

    @property
    def starts_while_endpoint_down(self) -> bool:
        """A service started before its network (or in an outage) starts and waits; a single pass
        would only wait for nothing, so it fails at once."""
        return self is RunMode.SERVICE

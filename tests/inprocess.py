"""A Daemon run inside the test process (on a thread), for tests that must reach into its state."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

from helpers import wait_for

from s3_uploader.config import load_config
from s3_uploader.daemon import Daemon


@contextmanager
def running_daemon(config_path: Path, *, wall: Optional[Callable[[], float]] = None, exit_code: Optional[int] = None,
                   **attrs: Any) -> Iterator[Daemon]:
    """Start ``Daemon(load_config(config_path))`` on a thread and yield it once its loops run.

    ``wall`` is its wall clock when given; ``attrs`` are set on the daemon before it starts (e.g. a
    shorter snapshot interval). On exit it is stopped and joined; an exception from ``run()`` fails
    the test, and so does an exit code other than ``exit_code`` when one is given.
    """
    d = Daemon(load_config(config_path)) if wall is None else Daemon(load_config(config_path), wall=wall)
    for name, value in attrs.items():
        setattr(d, name, value)
    result: Dict[str, Any] = {}

    def main() -> None:
        try:
            result["exit"] = d.run()
        except BaseException as exc:  # reported to the test below
            result["error"] = exc

    t = threading.Thread(target=main, name="daemon-main")
    t.start()
    try:
        wait_for(lambda: "error" in result or ("scanner" in d.heartbeats and "scheduler" in d.heartbeats),
                 what="the daemon's loops to start")
        if "error" in result:
            raise result["error"]
        yield d
    finally:
        d.request_stop()
        t.join(60)
        assert not t.is_alive(), "the daemon did not stop"
    if "error" in result:
        raise result["error"]
    if exit_code is not None:
        assert result["exit"] == exit_code

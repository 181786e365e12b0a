"""A plain install brings everything metrics_address needs."""

from __future__ import annotations

import importlib.metadata
import re


def test_prometheus_client_is_an_unconditional_requirement_of_a_plain_install():
    # what `pip install s3-uploader` installs is what the installed distribution's metadata requires
    # without an extra: metrics_address must work with nothing more (the `metrics` extra is kept, empty)
    reqs = importlib.metadata.requires("s3-uploader") or []
    mine = [r for r in reqs if re.match(r"prometheus[-_.]client\b", r, re.IGNORECASE)]
    plain = [r for r in mine if "extra" not in r.partition(";")[2]]
    assert plain, (f"prometheus-client is not required by a plain install (requirements: {reqs}); "
                   "if pyproject.toml says otherwise, reinstall: make venv")
    assert importlib.metadata.metadata("s3-uploader").get_all("Provides-Extra") is not None
    assert "metrics" in importlib.metadata.metadata("s3-uploader").get_all("Provides-Extra")

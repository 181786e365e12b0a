"""contrib/systemd/s3_uploader.service: accepted by systemd-analyze, Type=notify, hardened, reloadable,
starts on any host, and the ``systemctl edit`` drop-in of docs/operations.md gives it the real paths."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "s3_uploader.service"
EXEC = "/opt/s3-uploader/.venv/bin/s3-uploader"


def directives(text: str) -> Dict[str, List[str]]:
    """Every ``Key=value`` of the unit (keys may repeat), comments and section headers skipped."""
    out: Dict[str, List[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``systemd-analyze verify`` on a copy whose ExecStart names an executable that exists here.

    verify insists that the ExecStart binary exists, and this machine's is in the project's
    virtualenv rather than in /opt, so the copy points at the ``s3-uploader`` next to this Python.
    """
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is not installed: run the suite with `make test`, which installs systemd "
                    "when run as root, or `apt-get install systemd`")
    here = Path(sys.executable).parent / "s3-uploader"
    assert here.exists(), f"{here} is missing: install the package into this virtualenv"
    unit = tmp_path / "s3_uploader.service"
    unit.write_text(unit_text.replace(EXEC, str(here)))
    return subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path):
    r = verify(UNIT.read_text(), tmp_path)
    ours = [line for line in (r.stdout + r.stderr).splitlines() if "s3_uploader.service" in line]
    assert r.returncode == 0, r.stdout + r.stderr
    assert ours == [], "systemd-analyze has something to say about the unit:\n" + "\n".join(ours)


def test_systemd_analyze_verify_catches_a_misspelled_directive(tmp_path):
    # the check above can fail: a typo in a directive is reported
    r = verify(UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs="), tmp_path)
    assert "Unknown key 'WatchdogSecs'" in r.stdout + r.stderr


def test_the_unit_is_a_hardened_notify_service_run_from_the_virtualenv():
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["ExecStart"] == [f"{EXEC} run -c /etc/s3-uploader/config.ini"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"]
    assert int(d["WatchdogSec"][0]) >= 30
    assert d["StateDirectory"] == ["s3-uploader"]
    assert d["User"] == ["s3-uploader"]
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectControlGroups", "RestrictSUIDSGID"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"]
    assert d["ReadWritePaths"], "the watched directory must stay writable for cleanup"
    # systemd's default stop timeout (90s) must cover the daemon's drain (shutdown_timeout 30s)
    assert int(d["TimeoutStopSec"][0]) > 30


OPERATIONS = UNIT.parent.parent.parent / "docs" / "operations.md"


def readme_drop_in() -> str:
    """The ``systemctl edit`` drop-in docs/operations.md gives (its first ini block that sets ReadWritePaths)."""
    blocks = OPERATIONS.read_text().split("```ini\n")[1:]
    found = [b.split("```", 1)[0] for b in blocks if "ReadWritePaths=" in b]
    assert found, "docs/operations.md shows no systemctl edit drop-in setting ReadWritePaths="
    return found[0]


def effective(unit_text: str, drop_in: str, key: str) -> List[str]:
    """``key``'s list after the drop-in, as systemd applies it: values append, an empty one resets."""
    values: List[str] = []
    for text in (unit_text, drop_in):
        for value in directives(text).get(key, []):
            values = [] if value == "" else values + [value]
    return values


def test_the_unit_grants_cap_lease_and_no_other_capability():
    # the writer check's read lease on files of other users needs CAP_LEASE (docs/how-it-works.md, Stability)
    d = directives(UNIT.read_text())
    assert d["CapabilityBoundingSet"] == ["CAP_LEASE"]
    assert d["AmbientCapabilities"] == ["CAP_LEASE"]
    assert d["NoNewPrivileges"] == ["yes"]


def test_the_unit_starts_on_a_host_without_the_example_folder_and_the_readme_drop_in_sets_the_real_paths(tmp_path):
    d = directives(UNIT.read_text())
    # '-': systemd ignores a missing path instead of failing the start (systemd.exec(5))
    assert all(p.startswith("-") for p in d["ReadWritePaths"]), d["ReadWritePaths"]
    drop_in = readme_drop_in()
    paths = effective(UNIT.read_text(), drop_in, "ReadWritePaths")
    assert paths and all(p.lstrip("-") != "/var/lib/bi/New" for p in paths), paths
    # the unit with that drop-in, as systemctl edit writes it, is accepted without a word
    units = tmp_path / "units"
    (units / "s3_uploader.service.d").mkdir(parents=True)
    here = Path(sys.executable).parent / "s3-uploader"
    (units / "s3_uploader.service").write_text(UNIT.read_text().replace(EXEC, str(here)))
    (units / "s3_uploader.service.d" / "override.conf").write_text(drop_in)
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is not installed: run the suite with `make test`")
    r = subprocess.run([tool, "verify", str(units / "s3_uploader.service")], capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL, env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{units}:"))
    ours = [line for line in (r.stdout + r.stderr).splitlines() if "s3_uploader.service" in line]
    assert r.returncode == 0 and ours == [], r.stdout + r.stderr

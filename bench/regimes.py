"""The links the benchmark measures over: plain loopback, TLS, TLS held to HTTP/1.1, delay and rate, cuts.

A :class:`Regime` starts the regime's own SeaweedFS (``s3_uploader.embedded.LocalS3``: 127.0.0.1,
free ports, stopped by PID) and says, for one run of one tool, which endpoint it talks to and with
which environment and extra ``[s3]`` settings:

- ``plain``: ``http://`` straight to the server (the benchmark as it always was).
- ``tls``: the server's S3 port speaks TLS only, with a certificate for 127.0.0.1 signed by a
  throwaway CA made with ``openssl`` under the run's scratch folder. Every tool is given that CA and
  nothing else: s5cmd and rclone (Go) by ``SSL_CERT_FILE``, the AWS CLI by ``AWS_CA_BUNDLE``,
  s3-uploader by ``[s3] ca_bundle`` only (``SSL_CERT_FILE``, ``AWS_CA_BUNDLE`` and the like removed
  from its environment, so a run that works proves the setting does).
- ``tls-h1``: the same, with s5cmd and rclone held to HTTP/1.1 (``GODEBUG=http2client=0``):
  SeaweedFS offers HTTP/2 and Go takes it, AWS S3 speaks HTTP/1.1 only.
- ``rtt``: plain HTTP through ``bench/relay.py`` (a fresh relay process per run, so each tool meets
  the same link): ``--rtt`` added to every round trip and to each new connection, each direction
  held to ``--rate``. The relay's own CPU is measured per run, to show it is not the limit.
- ``flaky``: the same relay, which also resets one connection every ``--cut-every`` bytes sent
  upstream; the relay's count of bytes sent upstream over the workload's bytes is the figure.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from s3_uploader.embedded import LocalS3

REGIMES = ("plain", "tls", "tls-h1", "rtt", "flaky")
RELAYED = ("rtt", "flaky")
# each regime's workloads unless --workloads names them
DEFAULT_WORKLOADS = {"plain": ("small", "large", "mixed"), "tls": ("small", "large"), "tls-h1": ("small", "large"),
                     "rtt": ("small", "large"), "flaky": ("camera",)}
GO_TOOLS = ("s5cmd", "rclone")
# what would let a tool trust a CA other than the one its regime gives it
_TRUST_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
RELAY = Path(__file__).resolve().parent / "relay.py"


def make_pki(folder: Path) -> Tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for IP 127.0.0.1 it signed (EC P-256, 2 days), as PEM
    files made by ``openssl``: (certificate, key, CA)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr, ext = folder / "server.pem", folder / "server.key", folder / "server.csr", folder / "server.ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-sha256"]
    steps = [
        ["openssl", "req", "-x509", *ec, "-days", "2", "-keyout", ca_key, "-out", ca,
         "-subj", "/CN=s3-uploader bench throwaway CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
         "-sha256", "-extfile", ext, "-out", cert],
        ["openssl", "verify", "-CAfile", ca, cert],
    ]
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    for cmd in steps:
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} failed: {r.stderr.strip()}")
    for k in (ca_key, key):
        os.chmod(k, 0o600)
    return cert, key, ca


class RelayProcess:
    """``bench/relay.py`` in front of the server for one run; ``stop()`` returns its counters."""

    def __init__(self, upstream_port: int, log_path: Path, rtt: float, rate: float, cut_every: int):
        self.log_path = log_path
        self.err = open(log_path, "wb")
        cmd = [sys.executable, str(RELAY), "--upstream", f"127.0.0.1:{upstream_port}", "--rtt", f"{rtt}s",
               "--rate", f"{rate}B", "--cut-every", str(cut_every)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err, stdin=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "listening 127.0.0.1:PORT", or nothing if it died
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"the relay did not start; see {log_path}")
        self.endpoint = "http://" + line.split()[1]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> Dict[str, Any]:
        """Stop it by its PID (SIGTERM, then SIGKILL after 10 s); its final JSON line, or {}."""
        stats: Dict[str, Any] = {}
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, _ = self.proc.communicate()
        for line in (out or "").splitlines():
            if line.startswith("{"):
                stats = json.loads(line)
        self.err.close()
        return stats


class Regime:
    """One regime's server and how each tool reaches it. ``start()`` before use, ``stop()`` after."""

    def __init__(self, name: str, scratch: Path, rtt: float = 0.04, rate: float = 0.0, cut_every: int = 0):
        if name not in REGIMES:
            raise ValueError(name)
        self.name = name
        self.scratch = scratch / f"regime-{name}"
        self.rtt, self.rate = rtt, rate
        self.cut_every = cut_every if name == "flaky" else 0
        self.tls = make_pki(self.scratch / "pki") if name.startswith("tls") else None
        self.server = LocalS3(self.scratch / "server", kind="seaweedfs", access_key="bench" + secrets.token_hex(4),
                              secret_key=secrets.token_urlsafe(24), tls=self.tls)
        self.relay: Optional[RelayProcess] = None

    @property
    def ca(self) -> Optional[str]:
        return str(self.tls[2]) if self.tls else None

    def describe(self) -> Dict[str, Any]:
        """What the results file says about this regime's link."""
        d: Dict[str, Any] = {"endpoint": self.server.endpoint}
        if self.tls:
            d["tls"] = "EC P-256 certificate for 127.0.0.1 from a throwaway CA (openssl)"
            d["go_http"] = "HTTP/1.1 (GODEBUG=http2client=0)" if self.name == "tls-h1" else "HTTP/2 where offered"
        if self.name in RELAYED:
            d.update(relay="bench/relay.py, one per run", rtt_s=self.rtt, rate_bytes_s=self.rate or None,
                     cut_every_bytes=self.cut_every or None)
        return d

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        self.server.stop()

    def begin_run(self, log_path: Path) -> str:
        """Before one run: the endpoint the tool is to use (a fresh relay's, in a relayed regime)."""
        if self.name not in RELAYED:
            return self.server.endpoint
        assert self.relay is None
        self.relay = RelayProcess(self.server.port, log_path, self.rtt, self.rate, self.cut_every)
        return self.relay.endpoint

    def end_run(self) -> Dict[str, Any]:
        """After one run: the relay's counters (bytes each way, connections, cuts, its CPU), or {}."""
        if self.relay is None:
            return {}
        relay, self.relay = self.relay, None
        stats = relay.stop()
        return {f"relay_{k}": v for k, v in stats.items()}

    def relay_pid(self) -> Optional[int]:
        return self.relay.pid if self.relay else None

    def tool_env(self, tool: str, env: Dict[str, str]) -> Dict[str, str]:
        """``env`` as ``tool`` gets it in this regime: the CA by the tool's own variable (none for
        s3-uploader, which gets ``[s3] ca_bundle``), and HTTP/1.1 for the Go tools in ``tls-h1``."""
        if not self.tls:
            return env
        env = {k: v for k, v in env.items() if k not in _TRUST_ENV}
        if tool in GO_TOOLS:
            env["SSL_CERT_FILE"] = str(self.tls[2])
            if self.name == "tls-h1":
                env["GODEBUG"] = ",".join(x for x in (env.get("GODEBUG"), "http2client=0") if x)
        elif tool == "awscli":
            env["AWS_CA_BUNDLE"] = str(self.tls[2])
        return env

    def uploader_s3(self) -> List[Tuple[str, str, str]]:
        """Extra config lines for s3-uploader in this regime."""
        return [("s3", "ca_bundle", str(self.tls[2]))] if self.tls else []


def workloads_for(regime: str, chosen: Optional[List[str]]) -> List[str]:
    return list(chosen) if chosen is not None else list(DEFAULT_WORKLOADS[regime])


def relay_figures(run: Dict[str, Any]) -> None:
    """Add to one run through the relay: the relay's CPU as a share of the run's wall time, and bytes
    sent per byte delivered (bytes the tool sent upstream, requests and retries included, over the
    workload's bytes)."""
    if "relay_up_bytes" in run:
        run["relay_cpu_pct"] = 100 * run["relay_cpu_s"] / run["secs"]
        run["sent_per_delivered"] = run["relay_up_bytes"] / run["bytes"] if run["bytes"] else None

"""A fault-injecting HTTP reverse proxy for tests, between the daemon and the real S3-compatible server.

The daemon's ``endpoint_url`` points at the proxy; the proxy forwards each request, bytes and
headers unchanged (``Host`` included, so SigV4 signatures made for the proxy's address verify
upstream), to the one upstream it was given on 127.0.0.1, and nowhere else. On the way it can:

- answer instead of the server, with S3's own XML error bodies: ``slowdown`` (503 SlowDown),
  ``throttle`` (429 TooManyRequests), ``internal`` (500 InternalError), ``error200`` (a 200 whose
  body is an ``<Error>``, as S3 may answer CompleteMultipartUpload), ``auth`` (403
  SignatureDoesNotMatch);
- break the connection: ``reset_request`` (RST after reading half the request body, so the server
  never sees it), ``reset_response`` (the server does the work, then the client gets half the
  response and an RST);
- ``timeout``: say nothing for ``timeout_seconds`` (set it past the client's read timeout), then
  close;
- an outage (:meth:`FaultProxy.outage`): every connection is reset until switched back;
- hold one operation (:meth:`FaultProxy.hold`) until released, and delay one (:meth:`FaultProxy.delay`);
- answer as AWS does for a bucket with default SSE-KMS (``kms=True``, see :meth:`FaultProxy._as_kms`):
  every ETag the client sees (PUT, UploadPart, Complete, HEAD, GET, ListParts, ListObjectsV2) is an
  opaque value instead of the MD5, stable per object, and every object answer carries
  ``x-amz-server-side-encryption: aws:kms``; with ``kms_header`` set to False the same opaque ETags
  come without that header, as from a server storing other bytes than were sent.

Faults come from a seeded random generator at ``rate`` per eligible request, or from a script of
forced faults per operation (:meth:`FaultProxy.force`), which always wins. Every request is
recorded as an :class:`Exchange` (operation, key, upload id, part number, fault, status), so tests
can count, e.g., the UploadPart requests of one upload id that reached the server.

The proxy is a context manager; :meth:`stop` closes every connection and joins every thread.
"""
from __future__ import annotations

import hashlib
import http.client
import random
import re
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

ERROR_FAULTS = {
    "slowdown": (503, "Service Unavailable", "SlowDown", "Please reduce your request rate."),
    "throttle": (429, "Too Many Requests", "TooManyRequests", "Too many requests, slow down."),
    "internal": (500, "Internal Server Error", "InternalError",
                 "We encountered an internal error. Please try again."),
    "auth": (403, "Forbidden", "SignatureDoesNotMatch",
             "The request signature we calculated does not match the signature you provided."),
    "error200": (200, "OK", "InternalError", "We encountered an internal error. Please try again."),
}
FAULTS = tuple(ERROR_FAULTS) + ("reset_request", "reset_response", "timeout")
RANDOM_FAULTS = ("slowdown", "throttle", "internal", "reset_request", "reset_response", "timeout")
OBJECT_OPS = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "ListParts",
              "HeadObject", "ListObjectsV2", "DeleteObject", "AbortMultipartUpload", "ListMultipartUploads")


@dataclass
class Exchange:
    """One request seen by the proxy and what became of it."""

    op: str
    method: str
    key: str
    upload_id: Optional[str]
    part_number: Optional[int]
    fault: Optional[str] = None  # the fault injected, or None when forwarded untouched
    status: Optional[int] = None  # the status the server answered (None: never reached it)
    done_at: Optional[float] = None  # time.monotonic() when the server's answer came back
    started_at: float = field(default_factory=time.monotonic)  # when the proxy read the request line

    @property
    def reached_server(self) -> bool:
        return self.status is not None


def operation(method: str, path: str, query: Dict[str, List[str]]) -> Tuple[str, str]:
    """The S3 operation name and object key of a path-style request."""
    bucket, _, key = urllib.parse.unquote(path.lstrip("/")).partition("/")
    q = set(query)
    if method == "PUT":
        if "partNumber" in q and "uploadId" in q:
            return "UploadPart", key
        return ("PutObject" if key else "CreateBucket"), key
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload", key
        if "uploadId" in q:
            return "CompleteMultipartUpload", key
        return ("DeleteObjects" if "delete" in q else "Post"), key
    if method == "DELETE":
        if "uploadId" in q:
            return "AbortMultipartUpload", key
        return ("DeleteObject" if key else "DeleteBucket"), key
    if method == "HEAD":
        return ("HeadObject" if key else "HeadBucket"), key
    if method == "GET":
        if "uploadId" in q:
            return "ListParts", key
        if "uploads" in q:
            return "ListMultipartUploads", key
        if not key:
            return ("ListObjectsV2" if "list-type" in q else "ListObjects"), key
        return "GetObject", key
    return method, key


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True  # server_close() joins every connection thread


class FaultProxy:
    """A reverse proxy on 127.0.0.1 (a free port) to ``127.0.0.1:upstream_port``.

    ``rate`` of the requests whose operation is in ``ops`` get a fault drawn from ``faults`` with a
    ``random.Random(seed)``. ``timeout_seconds`` is how long a ``timeout`` fault stays silent.
    """

    def __init__(self, upstream_port: int, *, seed: int = 0, rate: float = 0.0,
                 faults: Sequence[str] = RANDOM_FAULTS, ops: Iterable[str] = OBJECT_OPS,
                 timeout_seconds: float = 3.0, kms: bool = False):
        self.upstream = ("127.0.0.1", int(upstream_port))  # fixed: the proxy reaches nothing else
        self.kms = kms
        self.kms_header = True  # False: opaque ETags on answers that say the object is not encrypted
        self._real_etags: Dict[str, str] = {}  # opaque ETag shown -> the server's, for Complete's part list
        self.rng = random.Random(seed)
        self.timeout_seconds = timeout_seconds
        self.exchanges: List[Exchange] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._outage = False
        self._forced: Dict[str, List[str]] = {}
        self._held_ops: Set[str] = set()
        self._held = 0
        self._hold_generation = 0
        self._drop_held = False
        self._delays: Dict[str, float] = {}
        self._hold_after: Dict[str, int] = {}
        self._hold_part: Dict[str, int] = {}
        self._active: Dict[str, int] = {}
        self._sockets: Set[socket.socket] = set()
        self.set_faults(rate, faults, ops)
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve_connection(self.request)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread: Optional[threading.Thread] = None

    # -- control ------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, break every open connection, and join every thread."""
        self._stopping.set()
        with self._lock:
            self._changed.notify_all()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._break_all()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(self, rate: float, faults: Sequence[str] = RANDOM_FAULTS, ops: Iterable[str] = OBJECT_OPS) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        with self._lock:
            self.rate, self.faults, self.ops = rate, tuple(faults), frozenset(ops)

    def force(self, op: str, *faults: str) -> None:
        """The next requests of ``op`` get these faults, in order (before any random ones)."""
        with self._lock:
            self._forced.setdefault(op, []).extend(faults)

    def outage(self, on: bool) -> None:
        """While on, every connection (open or new) is reset: the endpoint is down."""
        with self._lock:
            self._outage = on
        if on:
            self._break_all()

    def hold(self, op: str, after: int = 0, part_number: Optional[int] = None) -> None:
        """Requests of ``op``, after the next ``after`` of them, wait (bodies read) until :meth:`release`.

        With ``part_number``, only requests for that part wait, whatever came before: a retried
        earlier part cannot shift which request is held, as it would with ``after``."""
        with self._lock:
            self._held_ops.add(op)
            self._hold_after[op] = after
            if part_number is None:
                self._hold_part.pop(op, None)
            else:
                self._hold_part[op] = part_number

    def release(self, drop: bool = True) -> None:
        """Let held requests go: dropped (connection reset, the server never sees them) or forwarded."""
        with self._lock:
            self._held_ops.clear()
            self._hold_part.clear()
            self._drop_held = drop
            self._hold_generation += 1
            self._changed.notify_all()

    def held(self) -> int:
        with self._lock:
            return self._held

    def active(self, op: str) -> int:
        """Requests of ``op`` being handled right now (read, held, delayed or forwarded)."""
        with self._lock:
            return self._active.get(op, 0)

    def delay(self, op: str, seconds: float) -> None:
        """Forward requests of ``op`` only after ``seconds`` (0 removes the delay)."""
        with self._lock:
            self._delays[op] = seconds

    # -- what happened ------------------------------------------------------------------------------
    def select(self, op: Optional[str] = None, *, key: Optional[str] = None, upload_id: Optional[str] = None,
               reached: Optional[bool] = None) -> List[Exchange]:
        with self._lock:
            items = list(self.exchanges)
        return [e for e in items if (op is None or e.op == op) and (key is None or e.key == key)
                and (upload_id is None or e.upload_id == upload_id)
                and (reached is None or e.reached_server == reached)]

    def count(self, op: Optional[str] = None, **kw: object) -> int:
        return len(self.select(op, **kw))  # type: ignore[arg-type]

    def faults_injected(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for e in self.select():
            if e.fault:
                out[e.fault] = out.get(e.fault, 0) + 1
        return out

    # -- one connection ----------------------------------------------------------------------------
    def _serve_connection(self, sock: socket.socket) -> None:
        with self._lock:
            if self._outage or self._stopping.is_set():
                _reset(sock)
                return
            self._sockets.add(sock)
        rfile = sock.makefile("rb")
        try:
            while not self._stopping.is_set():
                if not self._serve_request(sock, rfile):
                    return
        except (OSError, ValueError, http.client.HTTPException):
            return  # the client went away, or we broke the connection on purpose
        finally:
            with self._lock:
                self._sockets.discard(sock)
            rfile.close()

    def _serve_request(self, sock: socket.socket, rfile) -> bool:
        line = rfile.readline(65537)
        if not line or not line.strip():
            return False
        method, target, _version = line.decode("latin-1").split()
        headers: List[Tuple[str, str]] = []
        while True:
            h = rfile.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        hmap = {k.lower(): v for k, v in headers}
        if "chunked" in hmap.get("transfer-encoding", "").lower():
            raise ValueError("chunked request bodies are not supported by the test proxy")
        url = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        op, key = operation(method, url.path, query)
        part = query.get("partNumber", [None])[0]
        ex = Exchange(op, method, key, query.get("uploadId", [None])[0], int(part) if part else None)
        with self._lock:
            self.exchanges.append(ex)
            ex.fault = self._choose(op)
            self._active[op] = self._active.get(op, 0) + 1
        try:
            return self._answer(sock, rfile, method, target, url.path, headers, hmap, op, ex)
        finally:
            with self._lock:
                self._active[op] -= 1

    def _answer(self, sock: socket.socket, rfile, method: str, target: str, path: str,
                headers: List[Tuple[str, str]], hmap: Dict[str, str], op: str, ex: Exchange) -> bool:
        with self._lock:
            outage = self._outage
        if outage:
            ex.fault = "outage"
            _reset(sock)
            return False
        if hmap.get("expect", "").lower() == "100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        length = int(hmap.get("content-length") or 0)
        if ex.fault == "reset_request":
            rfile.read(length // 2)
            _reset(sock)
            return False
        body = rfile.read(length) if length else b""
        if len(body) != length:
            return False
        if not self._wait_hold(op, ex):
            _reset(sock)
            return False
        if ex.fault == "timeout":
            self._stopping.wait(self.timeout_seconds)
            _reset(sock)
            return False
        if ex.fault in ERROR_FAULTS:
            status, reason, code, message = ERROR_FAULTS[ex.fault]
            sock.sendall(_error_response(method, status, reason, code, message, path))
            return True
        delay = self._delays.get(op, 0.0)
        if delay and self._stopping.wait(delay):
            return False
        fwd = [(k, v) for k, v in headers if k.lower() not in ("expect", "connection", "keep-alive")]
        if self.kms and op == "CompleteMultipartUpload":
            body = self._real_part_etags(body)
        status, reason, rheaders, rbody = self._forward(method, target, fwd, body)
        if self.kms:
            rheaders, rbody = self._as_kms(op, rheaders, rbody)
        ex.status, ex.done_at = status, time.monotonic()
        out = _response_head(status, reason, rheaders, method, rbody) + rbody
        if ex.fault == "reset_response":
            sock.sendall(out[: max(1, len(out) // 2)])
            _reset(sock)
            return False
        sock.sendall(out)
        return hmap.get("connection", "").lower() != "close"

    def _choose(self, op: str) -> Optional[str]:
        """The fault for the next request of ``op`` (called under the lock)."""
        forced = self._forced.get(op)
        if forced:
            return forced.pop(0)
        if op in self.ops and self.faults and self.rate > 0 and self.rng.random() < self.rate:
            return self.rng.choice(self.faults)
        return None

    def _wait_hold(self, op: str, ex: Exchange) -> bool:
        """Wait while ``op`` is held; False when the held request is to be dropped."""
        with self._lock:
            if op not in self._held_ops:
                return True
            part = self._hold_part.get(op)
            if part is not None and ex.part_number != part:
                return True
            if self._hold_after.get(op, 0) > 0:
                self._hold_after[op] -= 1
                return True
            self._held += 1
            generation = self._hold_generation
            try:
                while self._hold_generation == generation and not self._stopping.is_set():
                    self._changed.wait(0.5)
            finally:
                self._held -= 1
            if self._drop_held or self._stopping.is_set():
                ex.fault = "dropped"
                return False
            return True

    def _forward(self, method: str, target: str, headers: List[Tuple[str, str]],
                 body: bytes) -> Tuple[int, str, List[Tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                conn.putheader(k, v)
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    # -- a bucket with default SSE-KMS ----------------------------------------------------------------
    def _opaque(self, real: str) -> str:
        """The ETag AWS would show instead of ``real`` (an MD5, or ``md5-N``) for a KMS-encrypted
        object: 32 hex digits that are not the MD5 (plus the same ``-N``), the same every time."""
        md5, dash, count = real.partition("-")
        fake = hashlib.sha256(b"kms:" + md5.encode()).hexdigest()[:32] + dash + count
        with self._lock:
            self._real_etags[fake] = real
        return fake

    def _as_kms(self, op: str, headers: List[Tuple[str, str]], body: bytes) -> Tuple[List[Tuple[str, str]], bytes]:
        out: List[Tuple[str, str]] = []
        for k, v in headers:
            if k.lower() == "etag":
                v = _ETAG_HEADER.sub(lambda m: self._opaque(m.group(0)), v)
            elif k.lower().startswith("x-amz-server-side-encryption") or k.lower().startswith("seaweed-"):
                continue  # the server's own copy of the real ETag, or its own SSE answer
            out.append((k, v))
        if self.kms_header and op in ("PutObject", "UploadPart", "CompleteMultipartUpload", "HeadObject",
                                      "GetObject", "CreateMultipartUpload"):
            out.append(("x-amz-server-side-encryption", "aws:kms"))
            out.append(("x-amz-server-side-encryption-aws-kms-key-id",
                        "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000"))
        if op in ("CompleteMultipartUpload", "ListParts", "ListObjectsV2", "ListObjects"):
            body = _ETAG_XML.sub(lambda m: m.group(1) + self._opaque(m.group(2).decode()).encode(), body)
        return out, body

    def _real_part_etags(self, body: bytes) -> bytes:
        """Complete's part list as the server gave the parts' ETags (the client has the opaque ones)."""
        def real(m: "re.Match[bytes]") -> bytes:
            with self._lock:
                return m.group(1) + self._real_etags.get(m.group(2).decode(), m.group(2).decode()).encode()
        return _ETAG_XML.sub(real, body)

    def _break_all(self) -> None:
        with self._lock:
            socks = list(self._sockets)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


_ETAG_HEADER = re.compile(r"[0-9a-fA-F]{32}(?:-\d+)?")
# an ETag in an XML body, its quotes written as they come: ", &quot; or &#34;
_ETAG_XML = re.compile(rb'(<ETag>(?:"|&quot;|&#34;)?)([0-9a-fA-F]{32}(?:-\d+)?)')


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed or overloaded server would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()  # the descriptor closes (with the RST) once the connection's reader is closed too


def _response_head(status: int, reason: str, headers: List[Tuple[str, str]], method: str, body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    for k, v in headers:
        if k.lower() in ("transfer-encoding", "connection", "keep-alive"):
            continue
        if k.lower() == "content-length" and method != "HEAD":
            continue  # set below from the body actually read (it may have been chunked)
        lines.append(f"{k}: {v}")
    if method != "HEAD":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_request_ids = iter(range(1, 1 << 62))


def _error_response(method: str, status: int, reason: str, code: str, message: str, resource: str) -> bytes:
    rid = f"faultproxy-{next(_request_ids)}"
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{resource}</Resource><RequestId>{rid}</RequestId></Error>").encode()
    headers = [("Content-Type", "application/xml"), ("x-amz-request-id", rid)]
    if method == "HEAD":  # a HEAD error has no body, only its length
        headers.append(("Content-Length", "0"))
        return _response_head(status, reason, headers, method, b"")
    return _response_head(status, reason, headers, method, body) + body

"""A userspace link between the benchmark's tools and its server: delay, rate, and cuts.

    .venv/bin/python bench/relay.py --upstream 127.0.0.1:8333 --rtt 40ms --rate 50Mbit [--cut-every 64MB]

``tc netem`` is not available on the benchmark's machines, so this relay stands in for a real link.
It listens on 127.0.0.1 (a free port unless ``--port``), prints ``listening 127.0.0.1:PORT`` as its
first line, opens one upstream connection per client connection and forwards bytes both ways:

- **delay**: every chunk is delivered half the round-trip time after it was read, in order, in each
  direction, so one request and its answer cost one RTT more than direct. A new connection's first
  bytes wait one RTT more (the TCP handshake a real link charges; the client's own connect is local).
- **rate**: each direction is one link of ``--rate`` bits per second shared by every connection (an
  uplink and a downlink): a chunk leaves when the link is free and arrives after its transmission
  time plus the delay. The link queues at most ``--queue`` of sending time; past that, readers stop
  reading (TCP back-pressure does the rest), as a router's buffer would.
- **cuts** (``--cut-every N``): each time the bytes sent upstream, all connections together, pass a
  multiple of N, the connection whose bytes pass it is reset (RST both ways) once the bytes up to
  the mark are delivered; what it sent past the mark is dropped. One connection at a time: work
  in flight on the others survives, as when one flow is dropped; cutting all of them at once would
  leave no request bigger than N / (requests in flight) able to finish. A request bigger than N
  may never finish.

A connection queues at most 4 MiB per direction (a TCP window's worth at this RTT), so a single
connection is limited by ``--rate`` or the server, not by the relay. On SIGTERM or SIGINT it stops
and prints one JSON line: connections, bytes each way, cuts and its own CPU seconds (the harness
also reads its CPU from /proc, to show the relay is not the limit).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import signal
import socket
import struct
import time
from typing import Any, Deque, List, Optional, Tuple, Union

CHUNK = 64 * 1024
CONN_QUEUE = 4 * 1024 * 1024  # bytes queued per direction of one connection before it stops reading
EOF = b""  # queue marker: half-close the destination
CUT = None  # queue marker: reset both sides

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "ki": 1024, "mi": 1024 ** 2, "gi": 1024 ** 3}


def parse_duration(text: str) -> float:
    """'40ms', '0.5s', '2' (seconds) -> seconds."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (e.g. 40ms, 0.5s)")
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def parse_rate(text: str) -> float:
    """'50Mbit', '2.5MB', '0' (no limit) -> bytes per second. bit = 1/8 byte; k, M, G are powers of 10."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgG]?)(bit|b|B|)(/s|ps)?\s*", text)
    if not m:
        raise ValueError(f"not a rate: {text!r} (e.g. 50Mbit, 6MB)")
    n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    return n / 8 if m.group(3) in ("bit", "b") else n


def parse_size(text: str) -> int:
    """'64MB', '64MiB', '1000' -> bytes (MB = 10^6, MiB = 2^20)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgG]i?|)B?\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 64MB, 16MiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class Link:
    """One direction of the emulated link, shared by every connection: its rate and its queue."""

    def __init__(self, rate: float, queue: float):
        self.rate = rate  # bytes/s, 0 = no limit
        self.queue = queue  # seconds of sending time the link holds before readers wait
        self.free_at = 0.0  # when the link has sent everything given to it so far

    def send(self, n: int, now: float) -> float:
        """Give the link ``n`` bytes read at ``now``; the time their last byte has left."""
        if not self.rate:
            return now
        self.free_at = max(self.free_at, now) + n / self.rate
        return self.free_at

    def wait(self, now: float) -> float:
        """Seconds a reader waits before reading more (0: the link's queue has room)."""
        return max(0.0, self.free_at - self.queue - now) if self.rate else 0.0


class Stats:
    def __init__(self) -> None:
        self.conns = self.up_bytes = self.down_bytes = self.cuts = self.errors = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a dropped link looks to both ends."""
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class Relay:
    """The relay's state: its settings, its two links and its counters. ``serve()`` runs it."""

    def __init__(self, upstream: Tuple[str, int], rtt: float = 0.0, rate: float = 0.0,
                 cut_every: int = 0, queue: float = 0.1):
        self.upstream = upstream
        self.delay = rtt / 2
        self.rtt = rtt
        self.up_link = Link(rate, queue)
        self.down_link = Link(rate, queue)
        self.cut_every = cut_every
        self.next_cut = cut_every
        self.stats = Stats()
        self._conns: "set[asyncio.Task[Any]]" = set()

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
        """Start listening; the caller reads the port from ``server.sockets`` and closes it."""
        return await asyncio.start_server(self._accepted, host, port, backlog=1024)

    async def close(self) -> None:
        """Reset every connection still open and wait for their tasks."""
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    async def _accepted(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.stats.conns += 1
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        writers: List[asyncio.StreamWriter] = [cwriter]
        try:
            sreader, swriter = await asyncio.open_connection(*self.upstream)
            writers.append(swriter)
            hold = asyncio.get_running_loop().time() + self.rtt  # the handshake's round trip
            pipes = [asyncio.ensure_future(self._pipe(creader, swriter, True, writers, hold)),
                     asyncio.ensure_future(self._pipe(sreader, cwriter, False, writers, 0.0))]
            try:
                await asyncio.gather(*pipes)
            finally:
                for p in pipes:
                    p.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
            for w in writers:
                w.close()
        except (OSError, asyncio.CancelledError) as exc:
            if isinstance(exc, OSError) and exc.args != ("cut",):
                self.stats.errors += 1  # a reset or refusal from either end (not ours)
            for w in writers:
                _reset(w)
        finally:
            self._conns.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool,
                    writers: List[asyncio.StreamWriter], hold: float) -> None:
        """One direction of one connection: a reader that stamps each chunk with when it is due,
        and a deliverer that writes it then. Ends at EOF (passed on) or a cut (both sides reset)."""
        loop = asyncio.get_running_loop()
        link = self.up_link if up else self.down_link
        q: Deque[Tuple[float, Optional[bytes]]] = collections.deque()
        queued = [0]
        have, room = asyncio.Event(), asyncio.Event()

        async def deliver() -> None:
            while True:
                while not q:
                    have.clear()
                    await have.wait()
                wait = q[0][0] - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                batch: List[bytes] = []
                now = loop.time()
                while q and q[0][0] <= now and q[0][1]:
                    data = q.popleft()[1]
                    assert data
                    batch.append(data)
                if batch:
                    dst.writelines(batch)
                    queued[0] -= sum(map(len, batch))
                    room.set()
                    await dst.drain()
                    continue
                if q and q[0][0] <= now:
                    item = q.popleft()[1]
                    if item is CUT:
                        self.stats.cuts += 1
                        dst.transport.set_write_buffer_limits(high=0)  # every byte up to the mark handed over
                        await dst.drain()
                        for w in writers:
                            _reset(w)
                        raise ConnectionResetError("cut")
                    try:
                        if dst.can_write_eof():
                            dst.write_eof()
                    except OSError:
                        pass  # the other end has gone already: nothing to half-close
                    return

        async def read() -> None:
            while True:
                while queued[0] > CONN_QUEUE:
                    room.clear()
                    await room.wait()
                pause = link.wait(loop.time())
                if pause:
                    await asyncio.sleep(pause)
                data = await src.read(CHUNK)
                now = loop.time()
                if not data:
                    q.append((max(now, hold) + self.delay, EOF))
                    have.set()
                    return
                cut = False
                if up:
                    before = self.stats.up_bytes
                    self.stats.up_bytes += len(data)
                    if self.cut_every and self.stats.up_bytes > self.next_cut:
                        data = data[:max(0, self.next_cut - before)]  # the bytes past the mark: dropped
                        while self.next_cut < self.stats.up_bytes:
                            self.next_cut += self.cut_every
                        cut = True
                else:
                    self.stats.down_bytes += len(data)
                due = max(link.send(len(data), now), hold) + self.delay
                if data:
                    q.append((due, data))
                    queued[0] += len(data)
                if cut:
                    q.append((due, CUT))
                have.set()
                if cut:
                    return

        task = asyncio.ensure_future(deliver())
        try:
            await read()
            await task
        finally:
            task.cancel()


async def _main(args: argparse.Namespace) -> None:
    relay = Relay(args.upstream, rtt=args.rtt, rate=args.rate, cut_every=args.cut_every, queue=args.queue)
    server = await relay.serve("127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    t0 = time.monotonic()
    await stop.wait()
    server.close()
    await relay.close()
    t = os.times()
    print(json.dumps({**relay.stats.as_dict(), "seconds": round(time.monotonic() - t0, 3),
                      "cpu_total_s": round(t.user + t.system, 3)}), flush=True)


def _upstream(text: str) -> Tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def _arg(parse: Any) -> Any:
    def f(text: str) -> Union[float, int]:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return f


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", type=_upstream, required=True, help="HOST:PORT of the server")
    p.add_argument("--port", type=int, default=0, help="port to listen on, on 127.0.0.1 (default: a free one)")
    p.add_argument("--rtt", type=_arg(parse_duration), default=0.0, help="round-trip time added, e.g. 40ms")
    p.add_argument("--rate", type=_arg(parse_rate), default=0.0, help="each direction's rate, e.g. 50Mbit "
                   "(default 0: no limit)")
    p.add_argument("--queue", type=_arg(parse_duration), default=0.1, help="the link's queue, as sending "
                   "time (default 100ms)")
    p.add_argument("--cut-every", type=_arg(parse_size), default=0, help="reset one connection every N bytes "
                   "sent upstream, e.g. 64MB (default 0: never)")
    args = p.parse_args(argv)
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()

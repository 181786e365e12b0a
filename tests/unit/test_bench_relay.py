"""bench/relay.py, the benchmark's emulated link: its delay, its rate and its cuts, on local sockets.

Each test runs a small server of its own on 127.0.0.1 behind a relay, both in the test's event loop,
and measures with the loop's clock. The relay never delivers early, so the lower bounds are exact;
the upper bounds leave room for a busy box and only catch a delay or a rate counted twice. Every
wait has a deadline (``asyncio.wait_for``).
"""
from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "relay.py"
_spec = importlib.util.spec_from_file_location("bench_relay", _PATH)
assert _spec is not None and _spec.loader is not None
relay: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(relay)

DEADLINE = 20.0  # seconds for any one test's exchanges


class Upstream:
    """The server behind the relay: echoes what it reads (or only counts it), one count per connection
    in ``received``; ``closed`` is set each time a connection ends. A protocol, not a stream reader:
    every byte is counted as it arrives, even when a reset follows at once."""

    def __init__(self, echo: bool = True):
        self.echo = echo
        self.received: List[int] = []
        self.closed = asyncio.Event()

    def protocol(self) -> asyncio.Protocol:
        up = self

        class Conn(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport, self.i = transport, len(up.received)
                up.received.append(0)

            def data_received(self, data: bytes) -> None:
                up.received[self.i] += len(data)
                if up.echo:
                    self.transport.write(data)

            def eof_received(self) -> None:
                self.transport.close()

            def connection_lost(self, exc: Any) -> None:
                up.closed.set()

        return Conn()


def run(test: Callable[[Any, int, Upstream], Awaitable[Dict[str, Any]]], echo: bool = True,
        **settings: Any) -> Dict[str, Any]:
    """Start an upstream server and a relay with ``settings`` in front of it, run ``test(relay, port,
    upstream)`` within the deadline, then close everything."""

    async def main() -> Dict[str, Any]:
        upstream = Upstream(echo)  # its event made in the loop it is used in (Python 3.9)
        server = await asyncio.get_running_loop().create_server(upstream.protocol, "127.0.0.1", 0)
        r = relay.Relay(("127.0.0.1", server.sockets[0].getsockname()[1]), **settings)
        front = await r.serve()
        try:
            return await asyncio.wait_for(test(r, front.sockets[0].getsockname()[1], upstream), DEADLINE)
        finally:
            front.close()
            await r.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def test_a_round_trip_costs_the_rtt_more_and_a_new_connection_one_rtt_more_for_its_handshake():
    rtt = 0.25

    async def exchanges(r, port, up) -> Dict[str, Any]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"
        first = loop.time() - t0
        t1 = loop.time()
        writer.write(b"b")
        assert await reader.readexactly(1) == b"b"
        second = loop.time() - t1
        writer.close()
        return {"first": first, "second": second}

    out = run(exchanges, rtt=rtt)
    assert 2 * rtt <= out["first"] < 3 * rtt  # handshake + round trip, not charged twice
    assert rtt <= out["second"] < 2 * rtt


def test_the_rate_holds_each_direction_and_is_shared_by_every_connection():
    rate = 1_000_000  # bytes/s
    size = 250_000

    async def two_senders(r, port, up) -> Dict[str, Any]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _reader, writer in conns:
            writer.write(b"x" * size)
        for _reader, writer in conns:
            await writer.drain()
            writer.write_eof()
        while sum(up.received) < 2 * size or len(up.received) < 2:
            up.closed.clear()
            await up.closed.wait()  # each upstream connection ends at the EOF, after its last byte
        elapsed = loop.time() - t0
        for _reader, writer in conns:
            writer.close()
        return {"elapsed": elapsed, "received": list(up.received)}

    out = run(two_senders, echo=False, rate=rate)
    assert out["received"] == [size, size]
    # two connections on one link: 500,000 bytes at 1,000,000 bytes/s, not 250,000 each on its own
    assert 2 * size / rate <= out["elapsed"] < 2 * size / rate + 0.5


def test_a_cut_resets_the_connection_after_exactly_N_bytes_and_the_next_connection_gets_through():
    n = 100_000

    async def cut(r, port, up) -> Dict[str, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"y" * (3 * n))
        with pytest.raises(ConnectionResetError):
            while await reader.read(65536):
                pass  # the echo of the first N bytes, then the reset
        await up.closed.wait()
        writer.close()
        first = up.received[0]
        # a second connection well short of the next mark (2N, counting what the relay read of the
        # first one: at most one chunk past N) is not cut
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"z" * (n // 4)
        writer.write(body)
        echoed = await reader.readexactly(len(body))
        writer.close()
        return {"first": first, "echoed": echoed == body, "cuts": r.stats.cuts, "conns": r.stats.conns}

    out = run(cut, cut_every=n)
    assert out == {"first": n, "echoed": True, "cuts": 1, "conns": 2}


def test_sizes_rates_and_durations_parse_as_the_benchmark_writes_them():
    assert relay.parse_duration("40ms") == pytest.approx(0.04)
    assert relay.parse_duration("0.5s") == 0.5
    assert relay.parse_rate("50Mbit") == 6_250_000
    assert relay.parse_rate("2MB") == 2_000_000
    assert relay.parse_rate("0") == 0
    assert relay.parse_size("64MB") == 64_000_000
    assert relay.parse_size("16MiB") == 16 * 1024 * 1024
    with pytest.raises(ValueError):
        relay.parse_rate("fast")

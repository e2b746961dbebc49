"""The benchmark's REST load client: a minimal HTTP/1.1 client on asyncio's protocol API, so that the
load generator costs less CPU than the API it measures (aiohttp's client cost about as much CPU per
request as the server), with keep-alive connections, one request in flight on each."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RestResult:
    requests: int
    #: Responses whose status was not 200.
    errors: int
    elapsed_s: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    body_bytes: int
    concurrency: int
    #: 200 responses whose body was not the expected body of the VMI asked for.
    wrong_bodies: int = 0
    #: CPU seconds the generator process used during the timed requests.
    client_cpu_s: float = 0.0
    #: CPU seconds the API process used while the generator ran (filled in by `measure_rest`).
    api_cpu_s: float = 0.0


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(sorted_values) - 1, int(share * len(sorted_values) + 0.999999) - 1))
    return sorted_values[index]


#: What the REST load generator is, for the table and the README.
REST_CLIENT = "raw asyncio HTTP/1.1 keep-alive client, guestinfo.lab.rest_load"


class _RestRun:
    """One run of requests shared by all connections: which VMI each request asks for, and the outcome."""

    def __init__(self, order: Sequence[int], connections: int) -> None:
        self.order = order
        self.next = 0
        self.active = connections
        self.latencies: list[float] = []
        self.errors = 0
        self.wrong_bodies = 0
        self.body_bytes = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class _KeepAliveGet(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a GET, its whole response, then the next GET (no pipelining).

    Each latency runs from writing the request to having the last byte of its body. Every response
    must carry a Content-Length; its status is counted and its body compared with the expected one.
    """

    def __init__(self, requests: Sequence[bytes], expected: Sequence[bytes]) -> None:
        self._requests = requests
        self._expected = expected
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._run: _RestRun | None = None
        self._index = -1
        self._started = 0.0
        self._body_at = -1  # where the body starts in the buffer once the head is in
        self._need = 0  # bytes of the whole response
        self._status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def start(self, run: _RestRun) -> None:
        self._run = run
        self._send_next()

    def _send_next(self) -> None:
        run = self._run
        assert run is not None and self._transport is not None
        if run.next >= len(run.order):
            self._run = None
            run.active -= 1
            if run.active == 0 and not run.done.done():
                run.done.set_result(None)
            return
        self._index = run.order[run.next]
        run.next += 1
        self._started = time.perf_counter()
        self._transport.write(self._requests[self._index])

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _fail(self, reason: str) -> None:
        run, self._run = self._run, None
        if run is not None and not run.done.done():
            run.done.set_exception(ConnectionError(reason))
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._run is None:
            self._fail(f"{len(buffer)} unexpected bytes from the server")
            return
        if self._body_at < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            start = head.find(b"\r\ncontent-length:")
            if not head.startswith(b"http/1.1 ") or start < 0:
                self._fail(f"not an HTTP/1.1 response with a Content-Length: {head[:200]!r}")
                return
            line_end = head.find(b"\r\n", start + 2)
            self._status = int(head[9:12])
            self._body_at = end + 4
            self._need = self._body_at + int(head[start + 17:line_end if line_end >= 0 else len(head)])
        if len(buffer) < self._need:
            return
        if len(buffer) > self._need:
            self._fail(f"{len(buffer) - self._need} bytes after the response")
            return
        elapsed = time.perf_counter() - self._started
        run = self._run
        body = bytes(buffer[self._body_at:])
        buffer.clear()
        self._body_at = -1
        run.latencies.append(elapsed)
        run.body_bytes = len(body)
        if self._status != 200:
            run.errors += 1
        elif body != self._expected[self._index]:
            run.wrong_bodies += 1
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._run is not None:
            self._fail(f"connection lost during the run: {exc}")


#: The longest one phase of the REST load may take (a connection that stops answering ends the run).
REST_RUN_TIMEOUT = 120.0


async def rest_load(base_url: str, namespace: str, expected: dict[str, bytes], requests: int, concurrency: int,
                    seed: int = 1, token: str | None = None, cafile: str | None = None) -> RestResult:
    """GET guestosinfo of random VMIs of `namespace`, `concurrency` at a time over keep-alive connections.

    `expected` is the guestosinfo body of each VMI name. The client is a minimal HTTP/1.1 one on
    asyncio's protocol API: it shares the machine's cores with the API, and aiohttp's client cost about
    as much CPU per request as the server. 200 warm-up requests are not counted. With `token` every
    request carries it as a bearer token and the warm-up first reads every VMI once (so that the timed
    requests meet cached decisions); an `https://` URL is verified against `cafile`.
    """
    scheme, _, address = base_url.rstrip("/").partition("://")
    host, _, port = address.partition(":")
    prefix = f"/apis/subresources.kubevirt.io/v1/namespaces/{namespace}/virtualmachineinstances"
    names = sorted(expected)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    wire = [
        f"GET {prefix}/{name}/guestosinfo HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode() for name in names
    ]
    bodies = [expected[name] for name in names]
    rng = random.Random(seed)
    order = [rng.randrange(len(names)) for _ in range(requests)]
    warmup = (list(range(len(names))) if token else []) + [rng.randrange(len(names)) for _ in range(min(200, requests))]
    tls = ssl.create_default_context(cafile=cafile) if scheme == "https" else None
    loop = asyncio.get_running_loop()
    connections = [
        (await loop.create_connection(lambda: _KeepAliveGet(wire, bodies), host, int(port), ssl=tls))[1]
        for _ in range(concurrency)
    ]
    try:
        for phase in ("warm-up", "timed"):
            run = _RestRun(warmup if phase == "warm-up" else order, len(connections))
            cpu_before, started = time.process_time(), time.perf_counter()
            for connection in connections:
                connection.start(run)
            try:
                await asyncio.wait_for(run.done, REST_RUN_TIMEOUT)
            except TimeoutError:
                raise ConnectionError(f"the {phase} requests were not all answered within {REST_RUN_TIMEOUT:.0f}s "
                                      f"({len(run.latencies):,} were)") from None
            elapsed, client_cpu = time.perf_counter() - started, time.process_time() - cpu_before
    finally:
        for connection in connections:
            connection.close()
    ordered = sorted(run.latencies)
    return RestResult(
        requests=len(ordered), errors=run.errors, elapsed_s=elapsed, requests_per_s=len(ordered) / elapsed,
        p50_ms=percentile(ordered, 0.5) * 1000, p95_ms=percentile(ordered, 0.95) * 1000,
        p99_ms=percentile(ordered, 0.99) * 1000, max_ms=ordered[-1] * 1000, body_bytes=run.body_bytes,
        concurrency=concurrency, wrong_bodies=run.wrong_bodies, client_cpu_s=client_cpu,
    )



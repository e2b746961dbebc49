"""The REST load generator of the benchmark: it counts what it says, and checks every status and body."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from guestinfo.lab.bench import NAMESPACE
from guestinfo.lab.rest_load import rest_load

PATH = f"/apis/subresources.kubevirt.io/v1/namespaces/{NAMESPACE}/virtualmachineinstances/{{name}}/guestosinfo"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[Handler], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts an aiohttp server with one GET handler on the guestosinfo path; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get(PATH, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def body_of(name: str) -> bytes:
    return b'{"hostname":"' + name.encode() + b'"}'


async def test_every_request_is_timed_and_its_body_checked(serve: Serve) -> None:
    asked: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        asked.append(request.match_info["name"])
        return web.Response(body=body_of(request.match_info["name"]), content_type="application/json")

    names = [f"vm-{i:02d}" for i in range(50)]
    url = await serve(handler)
    result = await rest_load(url, NAMESPACE, {name: body_of(name) for name in names}, requests=500, concurrency=8)
    assert (result.requests, result.errors, result.wrong_bodies) == (500, 0, 0)
    assert len(asked) == 500 + 200  # the 200 warm-up requests are sent but not counted
    assert set(asked) <= set(names) and len(set(asked)) > 40
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms
    assert result.requests_per_s == pytest.approx(500 / result.elapsed_s)
    assert result.client_cpu_s > 0 and result.concurrency == 8
    assert result.body_bytes == len(body_of("vm-00"))


async def test_a_body_of_another_vmi_is_counted_wrong(serve: Serve) -> None:
    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return web.Response(body=body_of("vm-1" if name == "vm-0" else name), content_type="application/json")

    url = await serve(handler)
    result = await rest_load(url, NAMESPACE, {"vm-0": body_of("vm-0")}, requests=300, concurrency=4)
    assert (result.requests, result.errors, result.wrong_bodies) == (300, 0, 300)
    both = {"vm-0": body_of("vm-0"), "vm-2": body_of("vm-2")}
    mixed = await rest_load(url, NAMESPACE, both, requests=300, concurrency=4)
    assert mixed.errors == 0 and 0 < mixed.wrong_bodies < 300


async def test_a_status_other_than_200_is_an_error(serve: Serve) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=404, body=body_of(request.match_info["name"]), content_type="application/json")

    url = await serve(handler)
    result = await rest_load(url, NAMESPACE, {"vm-0": body_of("vm-0")}, requests=300, concurrency=4)
    assert (result.requests, result.errors) == (300, 300)


async def test_a_response_without_content_length_fails_the_run(serve: Serve) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(body_of(request.match_info["name"]))
        await response.write_eof()
        return response

    url = await serve(handler)
    with pytest.raises(ConnectionError, match="Content-Length"):
        await rest_load(url, NAMESPACE, {"vm-0": body_of("vm-0")}, requests=10, concurrency=2)


async def test_a_server_closing_the_connection_fails_the_run(serve: Serve) -> None:
    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        return web.Response(body=b"")

    url = await serve(handler)
    with pytest.raises(ConnectionError, match="connection lost"):
        await rest_load(url, NAMESPACE, {"vm-0": body_of("vm-0")}, requests=10, concurrency=2)

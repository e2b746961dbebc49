"""Reading the REST API of a running pipeline in the end-to-end tests."""

from __future__ import annotations

from typing import Any

import aiohttp


async def get_json(session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, Any]:
    """Status and JSON body of GET `path` on 127.0.0.1:`port`; (0, None) while nothing answers there."""
    try:
        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status, await response.json(content_type=None)
    except (aiohttp.ClientError, ValueError):
        return 0, None

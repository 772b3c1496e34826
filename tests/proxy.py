"""A loopback HTTP proxy between a client and the S3 server, for tests.

It forwards every request to ``upstream`` and records what it saw (method, path, access key
id), so a test can tell which credentials reached which endpoint. Fault injection builds on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

_CREDENTIAL = re.compile(r"Credential=([^/]+)/")
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass
class Recorded:
    method: str
    path: str
    access_key: str | None


@dataclass
class S3Proxy:
    upstream: str
    requests: list[Recorded] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> S3Proxy:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        match = _CREDENTIAL.search(request.headers.get("Authorization", ""))
        self.requests.append(
            Recorded(request.method, request.path, match.group(1) if match else None)
        )
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            out_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS
            }
            return web.Response(status=upstream.status, body=payload, headers=out_headers)

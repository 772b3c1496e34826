"""``S3Proxy`` with faults for the operator tests: slow answers, and per-key GET failures.

``delay`` holds every request that long before forwarding it (a slow link, so progress output
has time to show); ``deny`` answers GetObject of those keys with 403 AccessDenied and
``vanish`` with 404 NoSuchKey, the way S3 does, so a run records real ``Code: Message`` errors.
Also the helper that runs the CLI as a real process without blocking the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from aiohttp import web

from tests.proxy import S3Proxy

_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message><Key>{key}</Key>"
    "<RequestId>faulty-proxy</RequestId></Error>"
)


@dataclass
class FaultyProxy(S3Proxy):
    delay: float = 0.0
    deny: set[str] = field(default_factory=set)
    vanish: set[str] = field(default_factory=set)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.method == "GET":
            _, _, key = request.path.lstrip("/").partition("/")
            if key in self.deny:
                return self._error(403, "AccessDenied", "Access Denied", key)
            if key in self.vanish:
                return self._error(404, "NoSuchKey", "The specified key does not exist.", key)
        return await super()._handle(request)

    @staticmethod
    def _error(status: int, code: str, message: str, key: str) -> web.Response:
        body = _ERROR.format(code=code, message=message, key=quote(key))
        return web.Response(status=status, body=body.encode(), content_type="application/xml")


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


async def run_cli_async(
    args: Sequence[str],
    *,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
) -> Finished:
    """``python -m asyncbackup ARGS`` in a real process, awaited (the loop keeps serving)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncbackup",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env if env is not None else os.environ),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(), err.decode())

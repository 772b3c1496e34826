"""Shared fixtures: a real S3 server over HTTP (moto's server mode in its own process, on a
free loopback port), isolated AWS configuration, and helpers to fill and compare buckets.

No test can reach a real account: every ``AWS_*`` variable is replaced, and the config and
credentials files point at a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import uvloop

from tests.faulty_proxy import FaultyProxy
from tests.proxy import S3Proxy, run_proxy

ROOT = Path(__file__).resolve().parent.parent
ACCESS_KEYS = {
    "default": ("AKIADEFAULT0000TEST", "default-secret-0123456789abcdefghijklmnop"),
    "src": ("AKIASOURCE00000TEST", "source-secret-0123456789abcdefghijklmnopq"),
    "dst": ("AKIADEST0000000TEST", "dest-secret-0123456789abcdefghijklmnopqrs"),
}


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    process: subprocess.Popen[str]

    def client(self, profile: str = "default") -> Any:
        key, secret = ACCESS_KEYS[profile]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "local_s3.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    try:
        yield S3Server(f"http://127.0.0.1:{port}", process)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


@pytest.fixture(autouse=True)
def aws_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Profiles ``default``, ``src`` and ``dst`` in throwaway AWS files; no real credentials."""
    home = tmp_path_factory.mktemp("aws")
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    credentials = "".join(
        f"[{name}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n\n"
        for name, (key, secret) in ACCESS_KEYS.items()
    )
    (home / "credentials").write_text(credentials)
    config = "[default]\nregion = us-east-1\n\n[profile src]\nregion = us-east-1\n\n"
    config += "[profile dst]\nregion = us-east-1\n"
    (home / "config").write_text(config)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return home


@dataclass(frozen=True)
class Buckets:
    source: str
    dest: str


@pytest.fixture
def buckets(s3_server: S3Server) -> Buckets:
    suffix = uuid.uuid4().hex[:12]
    names = Buckets(source=f"src-{suffix}", dest=f"dst-{suffix}")
    client = s3_server.client()
    client.create_bucket(Bucket=names.source)
    client.create_bucket(Bucket=names.dest)
    return names


@pytest.fixture
def s3(s3_server: S3Server) -> Any:
    """A plain boto3 client for setting up and checking buckets."""
    return s3_server.client()


def _debug_asyncio_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    return loop


_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio-debug": _debug_asyncio_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The embedding API runs on whatever loop its caller has: test it on asyncio (debug
    mode) and on uvloop."""
    if item.get_closest_marker("both_loops") is not None:
        return _LOOPS
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[S3Proxy]:
    """The recording, fault-injecting proxy in front of moto (``tests/proxy.py``)."""
    with run_proxy(s3_server.endpoint) as running:
        yield running


@pytest.fixture
async def faulty_proxy(s3_server: S3Server) -> AsyncIterator[FaultyProxy]:
    """The simpler proxy in front of moto (``tests/faulty_proxy.py``): a delay on every
    request, keys answered AccessDenied or NoSuchKey; served on the test's own loop."""
    faulty = FaultyProxy(s3_server.endpoint)
    await faulty.start()
    try:
        yield faulty
    finally:
        await faulty.close()


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, whatever the test runner's: what files are created with is checked."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)

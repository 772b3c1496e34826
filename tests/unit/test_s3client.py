"""How ``open_client`` sets up botocore: one data loader shared by our clients."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from asyncbackup.s3client import open_client


async def new_client(stack: contextlib.AsyncExitStack) -> Any:
    return await open_client(
        stack,
        role="source",
        profile=None,
        endpoint_url="http://127.0.0.1:9",
        region="us-east-1",
        max_pool_connections=2,
        connect_timeout=1,
        read_timeout=1,
    )


def loader_of(client: Any) -> Any:
    return client._loader


async def test_clients_share_one_data_loader(aws_env: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        one, two = await new_client(stack), await new_client(stack)
        assert loader_of(one) is loader_of(two)
        assert one.meta.service_model.operation_model("CopyObject").http["method"] == "PUT"


async def test_a_data_path_keeps_the_session_its_own_loader(
    aws_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        shared = loader_of(await new_client(stack))
        monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
        own = loader_of(await new_client(stack))
        assert own is not shared and str(tmp_path) in own.search_paths

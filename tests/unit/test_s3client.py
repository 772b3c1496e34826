"""How ``open_client`` sets up botocore: one data loader shared by our clients."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import open_test_client

NOWHERE = "http://127.0.0.1:9"  # no request is sent


def loader_of(client: Any) -> Any:
    return client._loader


async def test_clients_share_one_data_loader(aws_env: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        one, two = await open_test_client(stack, NOWHERE), await open_test_client(stack, NOWHERE)
        assert loader_of(one) is loader_of(two)
        assert one.meta.service_model.operation_model("CopyObject").http["method"] == "PUT"


async def test_a_data_path_keeps_the_session_its_own_loader(
    aws_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        shared = loader_of(await open_test_client(stack, NOWHERE))
        monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
        own = loader_of(await open_test_client(stack, NOWHERE))
        assert own is not shared and str(tmp_path) in own.search_paths

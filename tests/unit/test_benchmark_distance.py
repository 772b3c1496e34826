"""The benchmark's distant server (``--rtt``: ``benchmarks/delay.py``) and its run at each
tool's own default concurrency (``--own-defaults``).

The relay must add the distance it says it adds, and carry every byte of real S3 traffic
unchanged, in order; a tool "at its own default" must be given no concurrency flag at all.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from benchmarks import run as run_mod
from benchmarks import workloads as wl
from benchmarks.delay import distant
from benchmarks.tools import Job, asyncbackup_tool, discover
from tests.conftest import Buckets

RTT = 0.2


def test_the_relay_adds_a_round_trip_to_each_exchange_and_one_to_each_connection(
    s3: Any, buckets: Buckets
) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)  # many chunks each way: their order is kept
    s3.put_object(Bucket=buckets.source, Key="big", Body=body)
    endpoint = s3.meta.endpoint_url
    signed = s3.generate_presigned_url("get_object", {"Bucket": buckets.source, "Key": "big"})
    url = signed.removeprefix(endpoint)  # moto takes it from another port as well
    started = time.perf_counter()
    with urllib.request.urlopen(endpoint + url, timeout=30) as answer:
        direct = answer.read()
    near = time.perf_counter() - started
    with distant(endpoint, RTT) as far:
        started = time.perf_counter()
        with urllib.request.urlopen(far + url, timeout=30) as answer:
            relayed = answer.read()
        away = time.perf_counter() - started
    assert direct == body
    assert relayed == body
    # a new connection (one round trip), then the request and its answer (one more)
    assert away >= near + 2 * RTT * 0.95


def test_a_staged_backup_through_the_relay_copies_every_object(
    s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """asyncbackup at its own default concurrency, its S3 traffic all through the relay: the
    copy is whole, staged and at the destination, as the harness checks it."""
    workload = wl.Workload("small", ((25, 300), (2, 70_000)))
    expected = wl.generate(workload, tmp_path / "data")
    for key in expected:
        data = (tmp_path / "data" / key).read_bytes()
        s3.put_object(Bucket=buckets.source, Key=f"small/{key}", Body=data)
    tool = asyncbackup_tool("asyncbackup", [])
    with distant(s3.meta.endpoint_url, 0.01) as far:
        job = Job(far, buckets.source, buckets.dest, "small", tmp_path / "stage", 0)
        result = run_mod.one_run(tool, "staged", job, s3, expected, dict(os.environ))
    assert result["returncode"] == 0, result.get("error")
    assert "error" not in result
    assert wl.verify(s3, buckets.dest, "small", expected, sample=0) is None


def test_at_their_own_defaults_the_tools_are_given_no_concurrency(tmp_path: Path) -> None:
    job = Job("http://127.0.0.1:1", "src", "dst", "small", tmp_path, 0)
    tools, _ = discover()
    for tool in tools:
        if tool.name == "bare-http":  # not a user's tool: it takes a number
            continue
        for steps in (tool.staged, tool.direct, tool.incremental):
            for argv in steps(job) if steps else []:
                flags = {"--concurrency", "--numworkers", "--transfers", "--checkers"}
                assert not flags & set(argv), (tool.name, argv)
    tuned = Job("http://127.0.0.1:1", "src", "dst", "small", tmp_path, 64)
    argv = asyncbackup_tool("asyncbackup", []).staged(tuned)[0]
    assert argv[argv.index("--concurrency") + 1] == "64"


def test_at_their_own_defaults_the_aws_config_sets_no_concurrency(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(run_mod, "WORK", tmp_path)
    run_mod.tool_env("http://127.0.0.1:1", 0)
    untuned = (tmp_path / "aws-config").read_text()
    assert "max_concurrent_requests" not in untuned and "max_queue_size" not in untuned
    run_mod.tool_env("http://127.0.0.1:1", 64)
    assert "max_concurrent_requests = 64" in (tmp_path / "aws-config").read_text()


def test_at_their_own_defaults_the_first_transfer_is_asyncbackups_own_default(
    s3: Any, buckets: Buckets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--own-defaults`` without ``--rtt`` still runs the scale phase: its first transfer (the
    harness's ``run_backup``) was given ``--concurrency 0``, which run_backup refuses, and the
    whole phase (the nightly run, the huge object) had no figures."""
    for n in range(3):
        s3.put_object(Bucket=buckets.source, Key=f"{run_mod.MANY}/{n}", Body=b"x" * 16)
    monkeypatch.setattr(run_mod, "WORK", tmp_path)
    monkeypatch.setattr(run_mod, "SOURCE", buckets.source)
    monkeypatch.setattr(run_mod, "DEST", buckets.dest)
    monkeypatch.setattr(run_mod, "listing_streams", lambda *args: [])  # not this test's
    args = argparse.Namespace(reps=1, concurrency=0)  # what --own-defaults sets
    result = run_mod.first_transfer(args, s3.meta.endpoint_url, dict(os.environ), 3)
    assert result["runs"][0]["status"] in ("stopped", "completed"), result
    assert result["runs"][0]["first_done_seconds"] is not None, result


def test_a_peer_that_resets_its_connection_ends_the_relay_of_it_without_a_traceback() -> None:
    """A server that resets a connection (or a tool killed mid-answer): the relay wrote on to
    the reset side (uvloop raises RuntimeError on a closed transport, not a ConnectionError),
    and printed "Unhandled exception in client_connected_cb" with a traceback into the
    benchmark's output, once per such connection."""
    with (
        socket.create_server(("127.0.0.1", 0)) as upstream,
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.delay",
                f"127.0.0.1:{upstream.getsockname()[1]}",
                "0.02",
            ],
            cwd=Path(run_mod.__file__).resolve().parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as relay,
    ):
        assert relay.stdin is not None and relay.stdout is not None
        port = int(relay.stdout.readline().strip().rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET")
            server, _ = upstream.accept()
            assert server.recv(16) == b"GET"
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            server.close()  # a reset
            assert client.recv(16) == b""  # passed on as the end of the answer
        time.sleep(0.3)  # the client's end reaches the reset side
        _, errors = relay.communicate(timeout=10)
    assert relay.returncode == 0
    assert "Traceback" not in errors, errors

"""The benchmark harness's own logic: what makes a published figure right or wrong.

The verification runs against the real S3 endpoint of the tests (moto in server mode); the
summaries and the table are pure functions of the runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from benchmarks import run as run_mod
from benchmarks import workloads as wl
from tests.conftest import Buckets

SMALL = wl.Workload("small", ((40, 64),))


def _seed(tmp_path: Path) -> tuple[dict[str, tuple[int, str]], dict[str, bytes]]:
    expected = wl.generate(SMALL, tmp_path)
    bodies = {key: (tmp_path / key).read_bytes() for key in expected}
    return expected, bodies


def _put_all(s3: Any, bucket: str, bodies: dict[str, bytes]) -> None:
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=f"small/{key}", Body=body)


def test_verify_accepts_a_complete_copy(s3: Any, buckets: Buckets, tmp_path: Path) -> None:
    expected, bodies = _seed(tmp_path)
    _put_all(s3, buckets.dest, bodies)
    assert wl.verify(s3, buckets.dest, "small", expected) is None


def test_verify_finds_a_wrong_body_of_the_right_size_outside_the_sample(
    s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """Two objects of the same size with their bodies swapped (what a mix-up between
    concurrent transfers writes): every key and size is right, the content is not."""
    expected, bodies = _seed(tmp_path)
    first, second = sorted(expected)[-2:]
    bodies[first], bodies[second] = bodies[second], bodies[first]
    assert hashlib.md5(bodies[first], usedforsecurity=False).hexdigest() != expected[first][1]
    _put_all(s3, buckets.dest, bodies)
    problem = wl.verify(s3, buckets.dest, "small", expected)
    assert problem is not None
    assert "content" in problem


def test_verify_finds_a_multipart_copy_with_a_wrong_part(
    s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """An object uploaded in parts has no MD5 for an ETag: its content is read and checked."""
    big = wl.Workload("big", ((3, 6 * wl.MiB),))
    expected = wl.generate(big, tmp_path)
    keys = sorted(expected)
    for key in keys:
        body = bytearray((tmp_path / key).read_bytes())
        if key == keys[-1]:
            body[-1] ^= 0xFF  # one byte off in the last part
        upload = s3.create_multipart_upload(Bucket=buckets.dest, Key=f"big/{key}")
        parts = []
        for number, start in enumerate(range(0, len(body), 5 * wl.MiB), 1):
            part = s3.upload_part(
                Bucket=buckets.dest,
                Key=f"big/{key}",
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=bytes(body[start : start + 5 * wl.MiB]),
            )
            parts.append({"PartNumber": number, "ETag": part["ETag"]})
        s3.complete_multipart_upload(
            Bucket=buckets.dest,
            Key=f"big/{key}",
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": parts},
        )
    problem = wl.verify(s3, buckets.dest, "big", expected, sample=0)
    assert problem == f"content of {keys[-1]} differs"


def _run(wall: float, error: str | None = None) -> dict[str, Any]:
    run: dict[str, Any] = {
        "wall": wall,
        "peak_rss_mb": 50.0,
        "cpu_user": 0.5,
        "cpu_sys": 0.1,
        "returncode": 0,
    }
    return {**run, "error": error} if error else run


def _results(cells: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summaries = {key: run_mod.summarize_cell(runs, SMALL) for key, runs in cells.items()}
    for key, summary in summaries.items():
        summary["vs_ours"] = run_mod.vs_ours(summaries, key)
    return {"small": {"cells": summaries}}


def test_a_cell_with_a_failed_run_is_marked_in_the_table_and_fails_the_run() -> None:
    """The median of a cell is of its complete copies only: the table, the JSON and the exit
    status must say that one of them was not."""
    incomplete = "incomplete copy: 12 missing, 0 unexpected objects"
    results = _results(
        {
            "asyncbackup/staged": [_run(2.0), _run(3.0), _run(4.0)],
            "rclone/staged": [_run(1.0), _run(9.0, incomplete), _run(2.0)],
        }
    )
    cell = results["small"]["cells"]["rclone/staged"]
    assert cell["ok"] is False
    assert cell["failed_runs"] == 1
    assert cell["error"] == incomplete
    assert cell["median_wall"] == 1.5  # of the two complete copies
    rows = {line.split()[2]: line for line in run_mod.table(results).splitlines()[2:4]}
    assert rows["rclone"].endswith("2/3")
    assert rows["asyncbackup"].endswith("3/3")
    assert run_mod.failed_runs(results) == [
        f"small staged rclone: 1 of 3 runs failed ({incomplete})"
    ]
    assert f"FAILED RUNS: small staged rclone: 1 of 3 runs failed ({incomplete})" in (
        run_mod.table(results)
    )


def test_a_run_with_every_copy_complete_has_no_failed_runs() -> None:
    results = _results({"asyncbackup/staged": [_run(2.0), _run(3.0)]})
    assert run_mod.failed_runs(results) == []
    assert "FAILED" not in run_mod.table(results)


def test_the_ratios_of_the_table_are_in_the_json() -> None:
    results = _results(
        {
            "asyncbackup/staged": [_run(2.0), _run(3.0), _run(4.0)],
            "asyncbackup/direct": [_run(3.0)],
            "s5cmd/staged": [_run(4.0)],
            "s5cmd/direct": [_run(2.0)],
            "aws/direct": [_run(1.0, "exit 1: boom")],
        }
    )
    cells = results["small"]["cells"]
    assert cells["asyncbackup/staged"]["vs_ours"] == 1.0
    assert cells["s5cmd/staged"]["vs_ours"] == 0.75  # ours 3.0 / its 4.0
    assert cells["asyncbackup/direct"]["vs_ours"] == 1.5  # ours 3.0 / s5cmd's 2.0
    assert cells["s5cmd/direct"]["vs_ours"] == 1.0
    assert cells["aws/direct"]["vs_ours"] is None
    table = run_mod.table(results)
    assert "0.75x" in table and "1.50x" in table
    assert "small    direct      aws          failed: exit 1: boom" in table


def test_direct_ratios_are_against_the_faster_s5cmd() -> None:
    """s5cmd runs twice, at 64 workers and at its own 256: the direct target is against
    s5cmd, so against whichever of the two was faster (the 64-worker one alone made our
    large direct 1.16x where the faster s5cmd made it 1.22x)."""
    results = _results(
        {
            "asyncbackup/direct": [_run(3.0)],
            "s5cmd/direct": [_run(2.0)],
            "s5cmd-256/direct": [_run(1.5)],
        }
    )
    cells = results["small"]["cells"]
    assert cells["asyncbackup/direct"]["vs_ours"] == 2.0  # ours 3.0 / the faster s5cmd's 1.5
    assert cells["s5cmd/direct"]["vs_ours"] == round(2.0 / 1.5, 3)
    assert cells["s5cmd-256/direct"]["vs_ours"] == 1.0

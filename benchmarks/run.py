"""The benchmark harness: asyncbackup against s5cmd, rclone and the AWS CLI.

One invocation starts SeaweedFS on loopback, uploads each workload once to ``bench-src``, then
for every repetition runs every tool (in a rotated order, so no tool always goes first) on the
same job into an emptied ``bench-dst``: the staged backup (download to local disk, upload), and
the direct bucket-to-bucket copy where the tool has one. A bare HTTP client (``bare.py``) does
the same job as a reference: the server's floor, not a peer. Each run is a fresh process tree
under ``benchmarks.timed`` (wall time and peak RSS), and each copy is verified (every key,
size and content: ETags against the data's MD5, and objects read back; staged, the staging
folder too: every object in it whole). Then the scale
benchmarks. Prints tables; writes JSON to ``benchmarks/results/``.

    python -m benchmarks.run [--quick] [--reps 3] [--concurrency 64] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import workloads as wl
from .delay import distant
from .install import PEERS_VENV, WORK
from .profile import py_spy, record, render, summarize
from .server import cpu_seconds, seaweedfs
from .tools import (
    BARE,
    Job,
    Tool,
    asyncbackup_baseline,
    discover,
    s5cmd_binary,
    source_commit,
    versions,
)

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SOURCE, DEST, HUGE_DEST = "bench-src", "bench-dst", "bench-huge-dst"


def tool_env(endpoint: str, concurrency: int) -> dict[str, str]:
    """The environment every tool runs in: dummy keys, no CA bundle, a throwaway AWS config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    config = WORK / "aws-config"
    # concurrency 0 (--own-defaults): the CLI untuned, its own 10 requests and queue of 1,000
    tuning = (
        f"s3 =\n    max_concurrent_requests = {concurrency}\n    max_queue_size = 10000\n"
        if concurrency
        else ""
    )
    config.write_text(f"[default]\nregion = us-east-1\n{tuning}")
    (WORK / "rclone.conf").write_text("")
    env.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=str(WORK / "no-credentials"),
        NO_PROXY="127.0.0.1,localhost",
        RCLONE_CONFIG=str(WORK / "rclone.conf"),
        RCLONE_CONFIG_BENCH_TYPE="s3",
        RCLONE_CONFIG_BENCH_PROVIDER="SeaweedFS",
        RCLONE_CONFIG_BENCH_ENDPOINT=endpoint,
        RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="bench",
        RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="bench-secret",
        RCLONE_CONFIG_BENCH_REGION="us-east-1",
    )
    return env


def timed(
    steps: list[list[str]], env: dict[str, str], cpus: frozenset[int] | None = None
) -> dict[str, Any]:
    """Run ``steps`` in a fresh ``benchmarks.timed`` process (on ``cpus`` only, if given); its
    JSON result."""
    pinned = [",".join(map(str, sorted(cpus)))] if cpus else []
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.timed", json.dumps(steps), *pinned],
        env=env,
        cwd=ROOT.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


#: Many-file trees of the workloads (seed data, staging) are kept here until the end of the
#: invocation instead of being deleted between runs. ext4 does not reuse an inode within 1-6
#: minutes of its deletion: creating a file then scans past every recently deleted inode of
#: its block group (``recently_deleted``/``find_inode_bit`` in ``perf``), so after one run's
#: 2,000 staged files are deleted, the next run's creations take 300-900 us of kernel CPU
#: each instead of 25 us, whichever tool runs next. Trees of a few files (the large
#: workload's 640 MB) are deleted at once, to bound the disk used.
KEPT = WORK / "kept"

#: ``--pin``: the server's CPU and the tools' (all the others)
_CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPUS = frozenset(_CPUS[-1:])
TOOL_CPUS = frozenset(_CPUS[:-1]) or SERVER_CPUS
#: a run's staging tree with fewer files than this is deleted right after the run
KEEP_FROM_FILES = 100


def kept_dir(name: str) -> Path:
    path = KEPT / name
    path.mkdir(parents=True)
    return path


@contextlib.contextmanager
def kept_trees() -> Iterator[None]:
    """``KEPT`` for the workloads, emptied before (what a crashed invocation kept) and after."""
    shutil.rmtree(KEPT, ignore_errors=True)
    try:
        yield
    finally:
        shutil.rmtree(KEPT, ignore_errors=True)


def release(path: Path) -> None:
    """Delete ``path`` now if it holds few files; else it waits for the end (``KEPT``)."""
    if sum(len(files) for _, _, files in os.walk(path)) < KEEP_FROM_FILES:
        shutil.rmtree(path, ignore_errors=True)


def one_run(
    tool: Tool,
    mode: str,
    job: Job,
    s3: Any,
    expected: dict[str, tuple[int, str]],
    env: dict[str, str],
    server: str | None = None,
) -> dict[str, Any]:
    """One timed run of ``tool`` in ``mode``, its copy verified; ``server``: the server's own
    endpoint, when the job's is a relay in front of it (``--rtt``)."""
    written: dict[str, Any] | None = None  # incremental: when each copy was written
    if mode == "incremental":  # over the copy the tool's direct run left: nothing to copy
        if problem := wl.verify(s3, job.dest_bucket, job.prefix, expected):
            return {"wall": 0.0, "peak_rss_mb": 0.0, "error": f"no copy to start from: {problem}"}
        written = wl.last_modified(s3, job.dest_bucket, job.prefix)
        # SeaweedFS's LastModified is in whole seconds: a copy written again in the second
        # its first was written in would keep it (not timed)
        time.sleep(1.0)
    else:
        wl.clear(s3, job.dest_bucket)
    job.stage.mkdir(parents=True, exist_ok=True)
    os.sync()  # the last run's staged data is written back now, not during this run
    steps = _steps(tool, mode)(job)
    server_before = cpu_seconds(server or job.endpoint)
    result = timed(steps, env, job.cpus)
    server_after = cpu_seconds(server or job.endpoint)
    if server_before is not None and server_after is not None:
        result["server_cpu"] = server_after - server_before
    if result["returncode"] != 0:
        result["error"] = f"exit {result['returncode']}: {result['stderr'].strip()[-300:]}"
    else:
        problem = wl.verify(s3, job.dest_bucket, job.prefix, expected)
        if problem:
            result["error"] = f"incomplete copy: {problem}"
        elif mode == "staged" and (problem := wl.verify_staged(job.stage, expected)):
            result["error"] = f"incomplete staging: {problem}"
        elif written is not None and (again := _written_again(written, s3, job)):
            # a figure of nothing to copy, not of a copy
            result["error"] = f"copied {again} of {len(written)} objects again"
    result.pop("stderr", None)
    return result


def _written_again(written: dict[str, Any], s3: Any, job: Job) -> int:
    """How many of the copies ``written`` (key -> LastModified) an incremental run wrote
    again: the tool compared nothing, or found a difference where there is none."""
    return _rewritten(written, wl.last_modified(s3, job.dest_bucket, job.prefix))


def _rewritten(before: dict[str, Any], after: dict[str, Any]) -> int:
    """How many of the objects ``before`` (key -> LastModified) have another one ``after``."""
    return sum(1 for key, when in before.items() if after.get(key) != when)


def _steps(tool: Tool, mode: str) -> Callable[[Job], list[list[str]]]:
    steps = {"staged": tool.staged, "direct": tool.direct, "incremental": tool.incremental}
    return steps[mode] or (lambda _: [])


def median(runs: list[dict[str, Any]], field: str) -> float:
    return float(statistics.median(run[field] for run in runs))


def summarize_cell(runs: list[dict[str, Any]], workload: wl.Workload) -> dict[str, Any]:
    """The figures of one tool and mode over its runs; the failed runs (an exit status, an
    incomplete copy or staging) are counted in ``failed_runs`` and left out of the figures."""
    ok = [run for run in runs if "error" not in run]
    failed = len(runs) - len(ok)
    if not ok:
        error = runs[0].get("error", "no run")
        return {"runs": runs, "ok": False, "failed_runs": failed, "error": error}
    wall = median(ok, "wall")
    walls = [run["wall"] for run in ok]
    return {
        "runs": runs,
        "ok": failed == 0,
        "failed_runs": failed,
        **({"error": next(run["error"] for run in runs if "error" in run)} if failed else {}),
        "median_wall": round(wall, 3),
        "best_wall": round(min(walls), 3),
        "spread": round((max(walls) - min(walls)) / wall, 3),
        "objects_per_s": round(workload.count / wall, 1),
        "mb_per_s": round(workload.total_bytes / 1e6 / wall, 1),
        "peak_rss_mb": round(max(run["peak_rss_mb"] for run in ok), 1),
        "cpu_seconds": round(median(ok, "cpu_user") + median(ok, "cpu_sys"), 2),
        **(
            {"server_cpu_seconds": round(median(ok, "server_cpu"), 2)}
            if all("server_cpu" in run for run in ok)
            else {}
        ),
    }


#: s5cmd as the harness runs it: at the shared concurrency, and at its own 256 workers
S5CMD_NAMES = ("s5cmd", "s5cmd-256")


def vs_ours(cells: dict[str, Any], key: str) -> float | None:
    """The table's "vs ours" of cell ``key`` ("TOOL/MODE"): staged and incremental,
    asyncbackup's median time / this tool's (asyncbackup's own row: 1); direct, this tool's /
    s5cmd's. None when either median is missing (all runs failed, or the tool is not
    installed). s5cmd's: the faster of its runs at 64 workers and at its own 256
    (``S5CMD_NAMES``)."""
    tool, mode = key.split("/")
    mine: float | None = cells[key].get("median_wall")
    base: float | None
    if mode in ("staged", "incremental"):
        base = cells.get(f"asyncbackup/{mode}", {}).get("median_wall")
        if mine and base:
            return round(mine / base if tool == "asyncbackup" else base / mine, 3)
        return None
    # s5cmd at 64 workers and at its own 256: the faster of the two is the one to beat
    s5cmd = [cells.get(f"{name}/direct", {}).get("median_wall") for name in S5CMD_NAMES]
    base = min((time for time in s5cmd if time), default=None)
    return round(mine / base, 3) if mine and base else None


def failed_runs(workloads: dict[str, Any]) -> list[str]:
    """One line for every cell with a failed run: a figure that is not of complete copies."""
    lines = []
    for name, workload in workloads.items():
        if "error" in workload:  # cut short: no figures at all
            lines.append(f"{name}: {workload['error']}")
        for key, cell in workload.get("cells", {}).items():
            if cell.get("failed_runs"):
                tool, mode = key.split("/")
                count = len(cell["runs"])
                lines.append(
                    f"{name} {mode} {tool}: {cell['failed_runs']} of {count} runs failed "
                    f"({cell['error']})"
                )
    return lines


def bench_workloads(
    args: argparse.Namespace,
    endpoint: str,
    tools: list[Tool],
    env: dict[str, str],
    tools_endpoint: str | None = None,
) -> dict[str, Any]:
    """Every workload, every tool; ``tools_endpoint``: where the tools reach the server
    (``--rtt``'s relay; by default ``endpoint``, where the harness seeds and verifies)."""
    s3 = wl.client(endpoint)
    wl.ensure_bucket(s3, SOURCE)
    wl.ensure_bucket(s3, DEST)
    results: dict[str, Any] = {}
    for workload in wl.QUICK if args.quick else wl.FULL:
        if args.workloads and workload.name not in args.workloads:
            continue
        cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
        try:
            bench_workload(args, endpoint, tools, env, s3, workload, cells, tools_endpoint)
        except Exception as exc:  # this workload has no figures; the others keep theirs
            error = f"{type(exc).__name__}: {exc}"
            print(f"error in workload {workload.name}: {error}", file=sys.stderr, flush=True)
            results[workload.name] = {
                "description": workload.describe(),
                "error": error,
                "runs": {f"{name}/{mode}": runs for (name, mode), runs in cells.items()},
            }
            continue
        summaries = {
            f"{name}/{mode}": summarize_cell(runs, workload) for (name, mode), runs in cells.items()
        }
        for key, summary in summaries.items():
            summary["vs_ours"] = vs_ours(summaries, key)
        results[workload.name] = {
            "description": workload.describe(),
            "objects": workload.count,
            "bytes": workload.total_bytes,
            "cells": summaries,
        }
    return results


def bench_workload(
    args: argparse.Namespace,
    endpoint: str,
    tools: list[Tool],
    env: dict[str, str],
    s3: Any,
    workload: wl.Workload,
    cells: dict[tuple[str, str], list[dict[str, Any]]],
    tools_endpoint: str | None = None,
) -> None:
    """Seed ``workload``, then every repetition of every tool on it, into ``cells``."""
    tool_cpus = TOOL_CPUS if args.pin else None
    reach = tools_endpoint or endpoint  # where the tools send their requests
    print(f"\n== {workload.name}: {workload.describe()}", flush=True)
    data = kept_dir(f"data-{workload.name}")
    expected = wl.generate(workload, data)
    wl.upload(s3, data, SOURCE, workload.name, s5cmd_binary(), env)
    release(data)
    problem = wl.verify(s3, SOURCE, workload.name, expected, sample=0)
    if problem:
        raise RuntimeError(f"seeding {workload.name} failed: {problem}")

    def run(tool: Tool, mode: str, stage: str, label: str) -> dict[str, Any]:
        """One timed run of ``tool``, its figures printed after ``label``."""
        where = KEPT / f"stage-{workload.name}-{stage}"
        job = Job(reach, SOURCE, DEST, workload.name, where, args.concurrency, tool_cpus)
        result = one_run(tool, mode, job, s3, expected, env, endpoint)
        release(where)
        print(
            f"  {label} {tool.name:12} {mode:11} {result['wall']:7.2f}s "
            f"{result['peak_rss_mb']:7.1f} MB  {result.get('error', 'ok')}",
            flush=True,
        )
        return result

    # One untimed run first: the first copy after seeding met a server and page cache in
    # another state than every later one (1.4-1.8x its median, always the same tool's run).
    run(tools[0], "staged", "warm-up", "warm-up (not counted)")
    for rep in range(args.reps):
        shift = rep % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            # incremental after direct: over the copy the tool's direct run just made
            for mode in ("staged", "direct", "incremental"):
                if mode != "staged" and getattr(tool, mode) is None:
                    continue
                result = run(tool, mode, f"{tool.name}-{mode}-{rep + 1}", f"rep {rep + 1}")
                cells.setdefault((tool.name, mode), []).append(result)
    wl.clear(s3, DEST)


def table(results: dict[str, Any]) -> str:
    head = (
        f"{'workload':8} {'mode':11} {'tool':12} {'median s':>9} {'best s':>7} {'spread':>7} "
        f"{'obj/s':>8} {'MB/s':>7} {'RSS MB':>7} {'CPU s':>6} {'srv CPU':>7} {'vs ours':>8} "
        f"{'runs ok':>7}"
    )
    lines = [head, "-" * len(head)]
    for name, workload in results.items():
        if "error" in workload:
            lines.append(f"{name:8} failed: {workload['error'][-300:]}")
        cells = workload.get("cells", {})
        for key, cell in cells.items():
            tool, mode = key.split("/")
            if not cell.get("median_wall"):
                lines.append(f"{name:8} {mode:11} {tool:12} failed: {cell.get('error')}")
                continue
            server = cell.get("server_cpu_seconds")
            server_cpu = f"{server:.1f}" if server is not None else "-"
            ratio = vs_ours(cells, key)
            runs = len(cell["runs"])
            runs_ok = f"{runs - cell.get('failed_runs', 0)}/{runs}"
            lines.append(
                f"{name:8} {mode:11} {tool:12} {cell['median_wall']:9.2f} "
                f"{cell['best_wall']:7.2f} {cell['spread']:6.0%} {cell['objects_per_s']:8.0f} "
                f"{cell['mb_per_s']:7.1f} {cell['peak_rss_mb']:7.1f} {cell['cpu_seconds']:6.1f} "
                f"{server_cpu:>7} {f'{ratio:.2f}x' if ratio else '-':>8} "
                f"{runs_ok:>7}"
            )
    lines.append(
        "vs ours (of the medians): staged = asyncbackup's time / this tool's time (target <= "
        "0.80 against the fastest peer); direct = this tool's time / the faster s5cmd's; "
        "incremental (a nightly run over a destination that holds every copy already: nothing "
        "to copy, both buckets listed and compared) = asyncbackup's time / this tool's. best: the "
        "fastest run; spread: (slowest - fastest) / median; CPU s: the tool's processes, "
        "srv CPU: the server's during the run (medians); runs ok: the runs that exited 0 with "
        "a complete copy (staged: and staging; incremental: no copy written again), the only "
        "ones the figures are of. bare-http "
        "is not a peer: a bare HTTP client (benchmarks/bare.py), the least the server and "
        "disk need for the job"
    )
    lines += [f"FAILED RUNS: {line}" for line in failed_runs(results)]
    return "\n".join(lines)


def scale(*argv: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``python -m benchmarks.scale ARGV`` in a process of its own (its RSS is its own); the
    JSON it prints."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", *argv],
        cwd=ROOT.parent,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def scale_no_server(args: argparse.Namespace) -> dict[str, Any]:
    files_1m = 100_000 if args.quick else 1_000_000
    files_interval = 10_000 if args.quick else 100_000

    print("\n== scale: checkpoint and pipeline (no server)", flush=True)
    out: dict[str, Any] = {"checkpoint": scale("checkpoint", "--files", str(files_1m))}
    print(f"  checkpoint {files_1m:,} files: {out['checkpoint']}", flush=True)
    out["pipeline_big"] = scale("pipeline", "--files", str(files_1m), "--interval", "1")
    print(f"  pipeline {files_1m:,} files, interval 1: {out['pipeline_big']}", flush=True)
    rate = str(args.rate)
    for interval in ("1", "1000000000"):
        argv = ("pipeline", "--files", str(files_interval), "--interval", interval, "--rate", rate)
        out[f"interval_{interval}"] = result = scale(*argv)
        print(f"  pipeline {files_interval:,} files at {rate}/s, interval {interval}: {result}")
    one, never = out["interval_1"]["wall_seconds"], out["interval_1000000000"]["wall_seconds"]
    out["interval_1_overhead"] = round((one - never) / one, 4)
    return out


def scale_with_server(
    args: argparse.Namespace, endpoint: str, env: dict[str, str], tools: list[Tool]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print("\n== scale: the large bucket", flush=True)
    expected = seed_many(args, endpoint, env)
    out["first_transfer"] = first_transfer(args, endpoint, env, len(expected))
    out["nightly"] = incremental_scale(args, endpoint, env, tools, expected)
    out["huge_object"] = huge_object(args, endpoint, env)
    return out


#: the large bucket's prefix (``seed_many``)
MANY = "many"


def seed_many(
    args: argparse.Namespace, endpoint: str, env: dict[str, str]
) -> dict[str, tuple[int, str]]:
    """Upload the large bucket (100,000 objects of 16 bytes; 10,000 with ``--quick``) under
    ``MANY``; its objects (relative key -> size and MD5)."""
    s3 = wl.client(endpoint)
    wl.ensure_bucket(s3, SOURCE)  # made by the workloads, unless they did not run
    wl.ensure_bucket(s3, DEST)
    count = 10_000 if args.quick else 100_000
    many = wl.Workload(MANY, ((count, 16),))
    data = fresh_dir(WORK / "data" / MANY)
    expected = wl.generate(many, data)
    started = time.perf_counter()
    wl.upload(s3, data, SOURCE, MANY, s5cmd_binary(), env)
    shutil.rmtree(data)
    print(f"  seeded {count:,} objects in {time.perf_counter() - started:.1f}s", flush=True)
    return expected


def first_transfer(
    args: argparse.Namespace, endpoint: str, env: dict[str, str], count: int
) -> dict[str, Any]:
    """Listing to first transfer on the large bucket (``seed_many``, ``count`` objects)."""
    s3 = wl.client(endpoint)
    prefix = MANY
    print(f"\n== scale: first transfer on a {count:,}-object bucket", flush=True)
    runs = []
    for _ in range(args.reps):
        wl.clear(s3, DEST)
        stage = fresh_dir(WORK / "stage")
        argv = ["first-transfer", "--endpoint", endpoint, "--bucket", SOURCE, "--prefix", prefix]
        argv += ["--dest", DEST, "--stage", str(stage), "--concurrency", str(args.concurrency)]
        runs.append(scale(*argv, env=env))
        print(f"  {runs[-1]}", flush=True)
    wl.clear(s3, DEST)
    return {
        "objects": count,
        "runs": runs,
        "median_first_done_seconds": statistics.median(r["first_done_seconds"] for r in runs),
        "listing": listing_streams(endpoint, env, prefix),
    }


def incremental_scale(
    args: argparse.Namespace,
    endpoint: str,
    env: dict[str, str],
    tools: list[Tool],
    expected: dict[str, tuple[int, str]],
) -> dict[str, Any]:
    """A nightly run over the large bucket (``seed_many``) where nothing changed: each tool's
    incremental command over a destination that holds a copy of every object (made once,
    untimed), alternating, at most 3 runs each; a run that writes a copy again (its
    LastModified moves) has no figure. Listing-bound: both buckets' pages, compared."""
    s3 = wl.client(endpoint)
    count = len(expected)
    print(f"\n== scale: a nightly run over {count:,} unchanged objects", flush=True)
    wl.clear(s3, DEST)
    job = Job(endpoint, SOURCE, DEST, MANY, fresh_dir(WORK / "stage"), args.concurrency)
    copier = next((t for t in tools if t.name == "s5cmd"), tools[0])
    assert copier.direct is not None
    started = time.perf_counter()
    made = timed(copier.direct(job), env)
    problem = wl.verify(s3, DEST, MANY, expected, sample=0) if made["returncode"] == 0 else None
    if made["returncode"] != 0 or problem:
        why = problem or f"exit {made['returncode']}"
        raise RuntimeError(f"the copy to start from ({copier.name}) failed: {why}")
    print(f"  copied once by {copier.name} in {time.perf_counter() - started:.1f}s", flush=True)
    written = wl.last_modified(s3, DEST, MANY)
    time.sleep(1.0)  # SeaweedFS's LastModified is in whole seconds
    nightly = [t for t in tools if t.incremental is not None]
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(min(args.reps, 3)):
        shift = rep % len(nightly)
        for tool in nightly[shift:] + nightly[:shift]:
            assert tool.incremental is not None
            job = Job(endpoint, SOURCE, DEST, MANY, fresh_dir(WORK / "stage"), args.concurrency)
            result = timed(tool.incremental(job), env)
            result.pop("stderr", None)
            if result["returncode"] != 0:
                result["error"] = f"exit {result['returncode']}"
            elif again := _rewritten(written, wl.last_modified(s3, DEST, MANY)):
                result["error"] = f"copied {again} of {count} objects again"
                written = wl.last_modified(s3, DEST, MANY)
                time.sleep(1.0)
            runs.setdefault(tool.name, []).append(result)
            print(
                f"  rep {rep + 1} {tool.name:12} {result['wall']:7.2f}s "
                f"{result['peak_rss_mb']:7.1f} MB  {result.get('error', 'ok')}",
                flush=True,
            )
    wl.clear(s3, DEST)
    medians = {
        name: round(median(ok, "wall"), 3)
        for name, results in runs.items()
        if (ok := [r for r in results if "error" not in r])
    }
    return {"objects": count, "runs": runs, "median_wall": medians}


def listing_streams(endpoint: str, env: dict[str, str], prefix: str) -> list[dict[str, Any]]:
    """The whole listing of the large bucket in 1 and 8 streams, on loopback and behind 50 ms
    of added latency per request (a distant store)."""
    print("\n== scale: listing it whole, in 1 and in 8 streams", flush=True)
    out = []
    for latency in (0.0, 0.05):
        argv = ["listing", "--endpoint", endpoint, "--bucket", SOURCE, "--prefix", f"{prefix}/"]
        argv += ["--streams", "1", "8", "--latency", str(latency), "--path", "fast", "botocore"]
        out.append(scale(*argv, env=env))
        print(f"  {out[-1]}", flush=True)
    return out


def huge_object(args: argparse.Namespace, endpoint: str, env: dict[str, str]) -> dict[str, Any]:
    """One huge object: memory must not grow with object size, nor with its source's part
    size (copied in its own layout): uploaded in s5cmd's 50 MiB parts, then in parts four
    times the 128 MiB memory budget of parts (a quarter of the object with ``--quick``)."""
    size = 256 * wl.MiB if args.quick else 2048 * wl.MiB
    out: dict[str, Any] = {"bytes": size, **huge_run(args, endpoint, env, size, 50)}
    big = huge_run(args, endpoint, env, size, size // 4 // wl.MiB)
    out["big_parts"] = big
    if "error" in big and "error" not in out:
        out["error"] = f"in {size // 4 // wl.MiB} MiB parts: {big['error']}"
    return out


def huge_run(
    args: argparse.Namespace, endpoint: str, env: dict[str, str], size: int, part_mib: int
) -> dict[str, Any]:
    """The staged copy of one object of ``size`` uploaded in ``part_mib`` MiB parts."""
    s3 = wl.client(endpoint)
    wl.ensure_bucket(s3, SOURCE)
    wl.ensure_bucket(s3, DEST)
    print(
        f"\n== scale: one {size // wl.MiB} MiB object in {part_mib} MiB parts, staged by "
        "asyncbackup",
        flush=True,
    )
    huge = wl.Workload("huge", ((1, size),))
    data = fresh_dir(WORK / "data" / "huge")
    expected = wl.generate(huge, data)
    wl.upload(s3, data, SOURCE, "huge", s5cmd_binary(), env, part_mib)
    shutil.rmtree(data)
    tools, _ = discover()
    job = Job(endpoint, SOURCE, DEST, "huge", fresh_dir(WORK / "stage"), args.concurrency)
    run = one_run(tools[0], "staged", job, s3, expected, env)
    print(f"  {run}", flush=True)
    wl.clear(s3, DEST)
    fresh_dir(job.stage)
    return {"part_mib": part_mib, **run}


def profile_runs(args: argparse.Namespace, endpoint: str, env: dict[str, str]) -> dict[str, Any]:
    """py-spy on asyncbackup's staged run of the small and large workloads."""
    if py_spy() is None:
        return {"note": "py-spy not installed: skipped"}
    s3 = wl.client(endpoint)
    tools, _ = discover(args.fast_path_ab)
    out: dict[str, Any] = {}
    for workload in wl.QUICK if args.quick else wl.FULL:
        if workload.name not in ("small", "large"):
            continue
        if args.workloads and workload.name not in args.workloads:
            continue
        for tool in tools:
            if not tool.name.startswith(("asyncbackup", "ab-")):
                continue
            job = Job(endpoint, SOURCE, DEST, workload.name, WORK / "stage", args.concurrency)
            wl.clear(s3, DEST)
            fresh_dir(job.stage)
            suffix = "" if tool.name == "asyncbackup" else f"-{tool.name}"
            raw = RESULTS / f"profile-{workload.name}{suffix}.raw"
            os.environ.update(env)
            record(raw, tool.staged(job)[0])
            summary = summarize(raw, top=25)
            (RESULTS / f"profile-{workload.name}{suffix}.txt").write_text(render(summary) + "\n")
            print(f"\n== profile of {tool.name}, {workload.name}\n{render(summary)}", flush=True)
            out[f"{workload.name}{suffix}"] = summary
    return out


def compile_bytecode(checkouts: list[Path]) -> None:
    """Byte-compile each checkout's ``asyncbackup``, as ``pip install`` of a wheel does: an
    editable install under ``PYTHONDONTWRITEBYTECODE`` would otherwise compile every module
    again in every timed run (about 50 ms)."""
    for checkout in checkouts:
        python = checkout / ".venv" / "bin" / "python"
        subprocess.run(
            [str(python), "-m", "compileall", "-q", str(checkout / "asyncbackup")], check=True
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the harness")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per tool (default 3)")
    parser.add_argument("--concurrency", type=int, default=64, help="for every tool")
    parser.add_argument("--workloads", nargs="*", help="small, large, mixed (default all)")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale benchmarks")
    parser.add_argument("--profile", action="store_true", help="py-spy asyncbackup runs")
    parser.add_argument("--asyncbackup-only", action="store_true", help="skip the peers")
    parser.add_argument(
        "--huge-only",
        action="store_true",
        help="only the one-huge-object run (2 GiB; 256 MiB with --quick): its peak RSS",
    )
    parser.add_argument(
        "--nightly-only",
        action="store_true",
        help="only the nightly run over the large bucket (100,000 unchanged objects; 10,000 "
        "with --quick): each tool's incremental command",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="also run asyncbackup with extra flags as tool asyncbackup-NAME, alternating with "
        "the others (repeatable), e.g. --variant 'p2=--processes 2'",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="CHECKOUT",
        help="also run the asyncbackup of another checkout (with its .venv) as tool "
        "asyncbackup-base, e.g. a git worktree of main, to measure a change against it",
    )
    parser.add_argument(
        "--asyncbackup-args",
        default="",
        metavar="FLAGS",
        help="extra flags for the plain asyncbackup runs, e.g. '--processes 2'",
    )
    parser.add_argument(
        "--rate", type=float, default=2000.0, help="simulated objects/s (interval benchmark)"
    )
    parser.add_argument(
        "--fast-path-ab",
        action="store_true",
        help="also run asyncbackup --no-fast-path (as ab-no-fast), alternating with the rest",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="SeaweedFS on the last CPU, every tool on the others: a model of a server on "
        "another machine (each tool gets one core on a 2-core machine)",
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="start SeaweedFS with the tools' keys, so that it checks every signature",
    )
    parser.add_argument(
        "--rtt",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="put the server this far away (a round trip added to every exchange, one more to "
        "each new connection; benchmarks/delay.py) for the workloads; implies --no-scale",
    )
    parser.add_argument(
        "--own-defaults",
        action="store_true",
        help="each tool at its own default concurrency (what a user gets without tuning), "
        "not --concurrency; without s5cmd-256 (the same then) and bare-http (it takes a number)",
    )
    args = parser.parse_args(argv)
    if args.quick and args.reps == 3:
        args.reps = 2
    if args.rtt < 0:
        parser.error("--rtt must be 0 or more")
    if args.rtt and (args.nightly_only or args.huge_only or args.profile):
        parser.error(
            "--rtt measures the workloads only: not with --nightly-only, --huge-only or --profile"
        )
    args.no_scale = args.no_scale or bool(args.rtt)
    if args.own_defaults:
        args.concurrency = 0
    weed = PEERS_VENV / "bin" / "weed"
    if not weed.exists():
        print("SeaweedFS is not installed: run python -m benchmarks.install", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    tools, notes = discover(
        args.fast_path_ab, args.variant, shlex.split(args.asyncbackup_args), bare=not args.auth
    )
    if args.own_defaults:
        tools = [tool for tool in tools if tool.name not in ("s5cmd-256", BARE.name)]
    baseline = args.baseline.resolve() if args.baseline else None
    if baseline is not None:
        tools.insert(1, asyncbackup_baseline(baseline))
    if args.asyncbackup_only:
        tools = [tool for tool in tools if tool.name.startswith(("asyncbackup", "ab-no-fast"))]
        notes = ["peers skipped (--asyncbackup-only)"]
    for note in notes:
        print(f"note: {note}")
    compile_bytecode([ROOT.parent, *([baseline] if baseline is not None else [])])
    commands = {tool.name: tool.version for tool in tools if tool.version is not None}
    printed = versions({**commands, "seaweedfs": [str(weed), "version"]})
    commit = source_commit(ROOT.parent)
    print(f"asyncbackup at {commit}; " + "; ".join(f"{k}: {v}" for k, v in printed.items()))
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit,
        "baseline_commit": source_commit(baseline) if baseline is not None else None,
        "versions": printed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "args": {
            name: str(value) if isinstance(value, Path) else value
            for name, value in vars(args).items()
        },
        "tools": [tool.name for tool in tools],
        "notes": notes,
    }
    name = f"bench-{'quick-' if args.quick else ''}{time.strftime('%Y%m%d-%H%M%S')}.json"

    def save() -> None:  # after every phase, so a failure late in the run loses nothing
        report["load_average"] = os.getloadavg()
        (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")

    failed: list[str] = []

    def phase(title: str, run: Any, *run_args: Any) -> None:
        try:
            report[title] = run(*run_args)
        except Exception as exc:  # reported, and the other phases still run
            report[title] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"error in {title}: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(title)
        save()

    server_log = WORK / "seaweedfs.log"
    auth = ("bench", "bench-secret") if args.auth else None
    server_cpus = SERVER_CPUS if args.pin else None
    pinned = f" on CPU {sorted(SERVER_CPUS)}, tools on {sorted(TOOL_CPUS)}" if args.pin else ""
    with (
        kept_trees(),
        seaweedfs(weed, WORK / "seaweedfs", server_log, auth, server_cpus) as endpoint,
        contextlib.ExitStack() as stack,
    ):
        tools_endpoint = stack.enter_context(distant(endpoint, args.rtt)) if args.rtt else None
        env = tool_env(tools_endpoint or endpoint, args.concurrency)
        away = f", reached through {tools_endpoint} ({args.rtt * 1000:g} ms away)"
        print(
            f"SeaweedFS at {endpoint}{' (signatures checked)' if auth else ''}"
            f"{pinned}{away if tools_endpoint else ''}; "
            f"tools: {', '.join(t.name for t in tools)}"
            f"{' at their own default concurrency' if args.own_defaults else ''}"
        )
        if args.nightly_only:
            phase(
                "nightly",
                lambda: incremental_scale(
                    args, endpoint, env, tools, seed_many(args, endpoint, env)
                ),
            )
            print(f"\nresults written to {RESULTS / name}")
            return 1 if "error" in report["nightly"] else 0
        if args.huge_only:
            phase("huge_object", huge_object, args, endpoint, env)
            print(f"\nresults written to {RESULTS / name}")
            return 1 if "error" in report["huge_object"] else 0
        phase("workloads", bench_workloads, args, endpoint, tools, env, tools_endpoint)
        if "error" not in report["workloads"]:
            print("\n" + table(report["workloads"]), flush=True)
        if not args.no_scale:
            phase("scale_server", scale_with_server, args, endpoint, env, tools)
        if args.profile:
            phase("profile", profile_runs, args, endpoint, env)
    if not args.no_scale:
        phase("scale", scale_no_server, args)
    print(f"\nresults written to {RESULTS / name}")
    verdicts = ("workloads", "scale")  # their own errors, as well as a phase's failure
    if "error" not in report.get("workloads", {}):
        incomplete = failed_runs(report.get("workloads", {}))
        for line in incomplete:
            print(f"failed runs: {line}", file=sys.stderr)
        failed += ["workloads"] if incomplete else []
    huge = report.get("scale_server", {}).get("huge_object", {})
    if "error" in huge:  # the one huge object's run failed or copied it incompletely
        print(f"failed run: huge object: {huge['error']}", file=sys.stderr)
        failed.append("huge_object")
    return 1 if failed or any("error" in report.get(k, {}) for k in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())

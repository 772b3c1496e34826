"""A newcomer's first hour: the README followed literally, and the mistakes people make on
their first runs (a bucket given as a URL, sizes given as the CLI spells them). Each must be
one line saying what to do, with exit 2, and nothing copied to a key it does not belong at."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import ConfigError, run_backup
from tests.conftest import ROOT, Buckets, S3Server
from tests.helpers import cli_args, list_keys, put_objects, run_cli


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("scheme", ["s3://", "S3://"])
def test_source_path_given_as_an_s3_url_is_refused(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, scheme: str
) -> None:
    """``backup-s3 s3://bucket/Projects/TeamA`` (as the AWS CLI spells it) listed the prefix
    ``s3://bucket/Projects/TeamA/``, found nothing and ended 0, 'completed', its checkpoint
    archived: a nightly job that backs up nothing, reported as a success."""
    put_objects(s3, buckets.source, {"Projects/TeamA/a.txt": b"a"})
    url = f"{scheme}{buckets.source}/Projects/TeamA"
    result = run_cli([url, *cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)])
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert "SOURCE_PATH" in line and "'Projects/TeamA'" in line
    assert not (tmp_path / "checkpoints").exists()
    assert list_keys(s3, buckets.dest) == []


def test_dest_prefix_given_as_an_s3_url_is_refused(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """``--dest-prefix s3://archive/backups`` put every copy under the key
    ``s3://archive/backups/...`` of the destination bucket."""
    put_objects(s3, buckets.source, {"Projects/TeamA/a.txt": b"a"})
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)
    url = f"s3://{buckets.dest}/backups"
    result = run_cli(["Projects/TeamA", *args, "--dest-prefix", url])
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert "--dest-prefix" in line and "'backups'" in line
    assert list_keys(s3, buckets.dest) == []


async def test_run_backup_refuses_an_s3_url_as_source_path(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """Embedded, the same mistake returned a report 'completed' with 0 files."""
    put_objects(s3, buckets.source, {"Projects/TeamA/a.txt": b"a"})
    with pytest.raises(ConfigError, match="'Projects/TeamA'"):
        await run_backup(
            source_bucket=buckets.source,
            source_path=f"s3://{buckets.source}/Projects/TeamA",
            dest_bucket=buckets.dest,
            base_local_path=tmp_path,
            endpoint_url=s3_server.endpoint,
        )
    assert list_keys(s3, buckets.dest) == []


@pytest.mark.parametrize("side", ["source", "dest"])
@pytest.mark.parametrize("form", ["s3://{}", "{}/Projects"])
def test_bucket_given_with_a_url_or_a_folder_says_so(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path, side: str, form: str
) -> None:
    """``--source-bucket s3://company-data-db`` said 'cannot reach the source endpoint
    (ParamValidationError); check the endpoint URL and the network': the network was fine."""
    source = form.format(buckets.source) if side == "source" else buckets.source
    dest = form.format(buckets.dest) if side == "dest" else buckets.dest
    args = cli_args(s3_server.endpoint, tmp_path, source, dest)
    result = run_cli(["Projects/TeamA", *args])
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert f"--{side}-bucket" in line, line
    assert "network" not in line and "reach" not in line, line


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("multipart_threshold", "64MiB"),
        ("part_size", "8MiB"),
        ("max_bandwidth", "50MB/s"),
        ("concurrency", "32"),
        ("processes", "auto"),
        ("keep_archives", "3"),
        ("concurrency", None),
    ],
)
async def test_run_backup_option_given_as_the_cli_spells_it_is_a_config_error(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path, option: str, value: object
) -> None:
    """The README: keyword arguments are the CLI flags with Python values, and failures raise
    an AsyncBackupError subclass with a one-line message. ``multipart_threshold="64MiB"`` (or
    a concurrency read from an environment variable, a string) raised ``TypeError: '<' not
    supported between instances of 'str' and 'int'``, naming neither the option nor the fix."""
    options: dict[str, Any] = {option: value}
    with pytest.raises(ConfigError) as refused:
        await run_backup(
            source_bucket=buckets.source,
            source_path="Projects/TeamA",
            dest_bucket=buckets.dest,
            base_local_path=tmp_path,
            endpoint_url=s3_server.endpoint,
            **options,
        )
    assert option in str(refused.value) and "number" in str(refused.value)
    assert not (tmp_path / "checkpoints").exists()


def _readme_embedding_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Embedding: `await run_backup(...)`") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```\n", start)]


@pytest.mark.parametrize("typo", [False, True])
def test_the_readme_embedding_example_runs_as_shown(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path, typo: bool
) -> None:
    """The README's code, copied as it is (its buckets, folder and profile swapped for the
    test's, the endpoint from ``AWS_ENDPOINT_URL``), in a fresh interpreter: it prints its
    one line and nothing else (the library never prints), and a mistyped bucket raises the
    documented ``AsyncBackupError`` subclass with one line."""
    put_objects(s3, buckets.source, {f"Projects/TeamA/2024Q1/d{i}.txt": b"x" * i for i in range(5)})
    with (aws_env / "credentials").open("a") as credentials:
        credentials.write("[prod]\naws_access_key_id = AKIAPROD0000000TEST\n")
        credentials.write("aws_secret_access_key = prod-secret-0123456789abcdefghijklmno\n")
    with (aws_env / "config").open("a") as config:
        config.write("\n[profile prod]\nregion = us-east-1\n")
    source = "no-such-bucket-typo" if typo else buckets.source
    code = (
        _readme_embedding_example()
        .replace('"company-data-db"', repr(source))
        .replace('"company-archive"', repr(buckets.dest))
        .replace('"/mnt/data/scratch"', repr(str(tmp_path / "scratch")))
    )
    code += (
        "\ntry:\n    asyncio.run(nightly())\nexcept AsyncBackupError as exc:\n"
        "    print('raised', type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server.endpoint}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    if typo:
        assert result.stdout.startswith("raised StoreUnavailableError "), result.stdout
        assert "no-such-bucket-typo" in result.stdout
        assert len(result.stdout.splitlines()) == 1
    else:
        assert result.stdout == "completed 5 10 {}\n"
        assert sorted(list_keys(s3, buckets.dest)) == sorted(list_keys(s3, buckets.source))


@pytest.mark.parametrize("command", ["python -m", "backup-s3"])
def test_a_mistyped_flag_names_the_flag_meant_and_the_help_that_lists_it(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path, command: str
) -> None:
    """``asyncbackup s3 ... --dest-profle prod`` said 'unrecognized arguments: --dest-profle
    prod (see asyncbackup --help)', and ``asyncbackup --help`` lists the subcommands alone,
    not one of the flags."""
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest)
    result = run_cli(["Projects/TeamA", *args, "--dest-profle", "dst"], command=command)
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert "--dest-profle" in line and "did you mean --dest-profile?" in line, line
    help_command = "asyncbackup s3" if command == "python -m" else "backup-s3"
    assert f"(see {help_command} --help)" in line, line
    assert not (tmp_path / "checkpoints").exists()


def test_a_mistyped_checkpoint_tool_flag_points_at_its_own_help(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asyncbackup", "checkpoint", "list", str(tmp_path), "--jsn"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert "did you mean --json?" in line and "(see asyncbackup checkpoint list --help)" in line


@pytest.mark.parametrize("embedded", [False, True])
def test_a_tilde_in_base_local_path_is_the_home_folder(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    embedded: bool,
) -> None:
    """``--base-local-path=~/scratch`` (the ``=`` form, which the shell does not expand; a
    systemd unit or a crontab line without a shell; ``base_local_path="~/scratch"`` in
    Python) staged into a folder named ``~`` in the working directory, and the summary said
    'checkpoint archived as ~/scratch/checkpoints/...', where the user's home had nothing: a
    run from another directory started over, and cleaning up the stray ``~`` is how people
    type ``rm -rf ~``."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's asyncbackup, from any cwd
    put_objects(s3, buckets.source, {"Projects/TeamA/a.txt": b"a"})
    if embedded:
        report = asyncio.run(
            run_backup(
                source_bucket=buckets.source,
                source_path="Projects/TeamA",
                dest_bucket=buckets.dest,
                base_local_path="~/scratch",
                checkpoint_dir="~/checkpoints",
                endpoint_url=s3_server.endpoint,
            )
        )
        assert report.status == "completed"
    else:
        args = cli_args(s3_server.endpoint, Path("unused"), buckets.source, buckets.dest)
        args[args.index("--base-local-path") : args.index("--base-local-path") + 2] = [
            "--base-local-path=~/scratch",
            "--checkpoint-dir=~/checkpoints",
        ]
        result = run_cli(["Projects/TeamA", *args])
        assert result.returncode == 0, result.stderr
        assert f"checkpoint archived as {home}/checkpoints/archive/" in result.stderr
    assert list(work.iterdir()) == []
    assert (home / "scratch" / buckets.source).is_dir()
    assert len(list((home / "checkpoints" / "archive").iterdir())) == 1


def test_a_pattern_as_source_path_is_told_to_use_include(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """``backup-s3 'Projects/*/2024Q1'`` lists the folder named ``*`` (a key may hold one),
    finds nothing and ends 0 with 'check SOURCE_PATH': which did not say that SOURCE_PATH
    is no pattern, nor what takes one."""
    put_objects(s3, buckets.source, {"Projects/TeamA/2024Q1/a.txt": b"a"})
    args = cli_args(s3_server.endpoint, tmp_path, buckets.source, buckets.dest, "-q")
    result = run_cli(["Projects/*/2024Q1", *args])
    assert result.returncode == 0, result.stderr
    warning = result.stderr.splitlines()[0]
    assert "nothing to back up" in warning and "not a pattern" in warning, warning
    assert "--include" in warning, warning
    assert list_keys(s3, buckets.dest) == []

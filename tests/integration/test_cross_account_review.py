"""Cross-account set-ups as operators write them in ``~/.aws/config``: roles assumed from
moto's STS (server mode), an MFA device, SSO sessions, files saved by other editors. Each
side must run with its own identity (told by the access key id each proxy saw, and moto's
GetCallerIdentity for it), and a set-up that cannot work must stop in one line that says
what to do, exit 2, with no secret anywhere."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import ACCESS_KEYS, Buckets, S3Server
from tests.helpers import assert_same_objects, cli_args, numbered_objects, put_objects
from tests.integration.test_credential_refresh_review import _RefusingSts
from tests.proxy import run_proxy
from tests.reliability import CLI, one_error_line

MFA_PROFILE = (
    "\n[profile mfa]\nregion = us-east-1\nrole_arn = arn:aws:iam::444444444444:role/backup\n"
    "source_profile = src\nmfa_serial = arn:aws:iam::444444444444:mfa/operator\n"
)


def _args(s3_server: S3Server, buckets: Buckets, base: Path, *extra: str) -> list[str]:
    return ["data", *cli_args(s3_server.endpoint, base, buckets.source, buckets.dest, *extra)]


def _start(args: list[str], s3_server: S3Server, stdin: Any) -> subprocess.Popen[str]:
    """The CLI as cron or a CI job runs it: no terminal (a session of its own)."""
    return subprocess.Popen(
        [*CLI, *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, AWS_ENDPOINT_URL_STS=s3_server.endpoint),
        start_new_session=True,
    )


@pytest.mark.parametrize("stdin", ["devnull", "open"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
def test_a_role_with_mfa_and_no_terminal_stops_in_one_line(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    aws_env: Path,
    stdin: str,
    fast_path: bool,
) -> None:
    """A profile whose role needs an MFA code (``mfa_serial``), run with no terminal to ask
    on (cron, a CI job): botocore fell back to standard input with getpass's warnings. Empty
    (``/dev/null``), the run failed "unexpected EOFError", exit 3; a pipe nobody writes to
    (ssh without -n, a supervisor's), it waited for good, saying nothing. Now it is one line
    saying what to do, exit 2, after a short wait for a code on standard input."""
    put_objects(s3, buckets.source, numbered_objects(3))
    config = aws_env / "config"
    config.write_text(config.read_text() + MFA_PROFILE)
    args = _args(s3_server, buckets, tmp_path / "w", "--source-profile", "mfa")
    args += ["--dest-profile", "dst", *(() if fast_path else ("--no-fast-path",))]
    reading, writing = os.pipe()  # the "open" stdin: its writing end held, never written
    process = _start(args, s3_server, subprocess.DEVNULL if stdin == "devnull" else reading)
    os.close(reading)
    started = time.monotonic()
    try:
        _, err = process.communicate(timeout=60)
    finally:
        os.close(writing)
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 2, err
    # (a run waiting for the code says its progress meanwhile, as any run)
    line = one_error_line("\n".join(x for x in err.splitlines() if not x.startswith("progress:")))
    assert "cannot get the source credentials" in line and "--source-profile" in line, line
    assert "MFA code" in line and "mfa_serial" in line and "terminal" in line, line
    assert time.monotonic() - started < 40
    assert not s3.list_objects_v2(Bucket=buckets.dest).get("Contents")


SSO_PROFILES = (
    "\n[profile sso]\nsso_session = corp\nsso_account_id = 555555555555\n"
    "sso_role_name = Backup\nregion = us-east-1\n"
    "\n[sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\n"
    "sso_region = us-east-1\nsso_registration_scopes = sso:account:access\n"
    "\n[profile sso-legacy]\nsso_start_url = https://corp.awsapps.com/start\n"
    "sso_region = us-east-1\nsso_account_id = 555555555555\nsso_role_name = Backup\n"
    "region = us-east-1\n"
)


@pytest.mark.parametrize(
    ("profile", "side", "extra"),
    [
        ("sso", "source", ()),
        ("sso", "source", ("--no-fast-path",)),
        ("sso", "dest", ()),
        ("sso-legacy", "source", ()),
        ("sso-legacy", "dest", ("--no-fast-path",)),
    ],
    ids=["session-fast", "session-botocore", "session-dest", "legacy-fast", "legacy-dest"],
)
def test_an_sso_profile_not_signed_in_says_to_sign_in(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    aws_env: Path,
    profile: str,
    side: str,
    extra: tuple[str, ...],
) -> None:
    """An SSO profile with no token in the cache (``aws sso login`` never run on this
    machine, or its cache cleared): the run said "Error loading SSO Token: Token for corp does
    not exist; check --source-profile", which does not say how to get one, after botocore's
    traceback "Refreshing token failed during the mandatory refresh period" at each attempt
    (four) for a profile with an ``sso_session``. Now one line naming the command to run."""
    put_objects(s3, buckets.source, numbered_objects(3))
    config = aws_env / "config"
    config.write_text(config.read_text() + SSO_PROFILES)
    source, dest = (profile, "dst") if side == "source" else ("src", profile)
    args = _args(s3_server, buckets, tmp_path / "w", "--source-profile", source)
    args += ["--dest-profile", dest, *extra]
    done = subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, HOME=str(aws_env)),  # (an SSO cache of no one)
    )
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    role = "source" if side == "source" else "destination"
    assert f"cannot get the {role} credentials" in line, line
    assert f"aws sso login --profile {profile}" in line, line
    assert not s3.list_objects_v2(Bucket=buckets.dest).get("Contents")


def _caller(s3_server: S3Server, access_key: str) -> str:
    """Who moto's STS says ``access_key`` is (an assumed role's ARN for its keys)."""
    sts = boto3.client(
        "sts",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key="not-checked",
        region_name="us-east-1",
    )
    return str(sts.get_caller_identity()["Arn"])


@pytest.mark.parametrize("source", ["src", "mfa"], ids=["dest-mfa", "both-mfa"])
def test_one_mfa_code_serves_the_whole_run(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path, source: str
) -> None:
    """A destination profile whose role needs an MFA code, the code given once: the fast
    path's client and the botocore client each assumed the role, and each asked for a code
    (a second prompt on a terminal, for a code STS takes once; with the code on standard
    input, the run stopped at the first multipart upload: no second code, exit 3). The same
    profile named for both sides asked once a side. Now the role's credentials are shared by
    the clients of the process, and one code serves the run."""
    objects = {**numbered_objects(3), "data/big": os.urandom(6 * 1024 * 1024)}
    put_objects(s3, buckets.source, objects)
    config = aws_env / "config"
    config.write_text(config.read_text() + MFA_PROFILE)
    with run_proxy(s3_server.endpoint) as source_proxy, run_proxy(s3_server.endpoint) as dest:
        args = _args(s3_server, buckets, tmp_path / "w", "--source-profile", source)
        args += ["--dest-profile", "mfa", "--multipart-threshold", "5MiB", "--part-size", "5MiB"]
        args += ["--source-endpoint-url", source_proxy.endpoint]
        args += ["--dest-endpoint-url", dest.endpoint]
        process = _start(args, s3_server, subprocess.PIPE)
        _, err = process.communicate("123456\n", timeout=120)
        source_keys = {r.access_key for r in source_proxy.requests}
        dest_keys = {r.access_key for r in dest.requests}
    assert process.returncode == 0, err
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(objects)
    role = "arn:aws:sts::444444444444:assumed-role/backup/"
    assert len(dest_keys) == 1 and all(
        _caller(s3_server, k or "").startswith(role) for k in dest_keys
    )
    if source == "mfa":
        assert source_keys == dest_keys  # (one role, assumed once)
    else:
        assert source_keys == {ACCESS_KEYS["src"][0]}


def test_worker_processes_take_the_role_assumed_with_the_mfa_code(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path
) -> None:
    """``--processes`` with a source role that needs an MFA code, the code given: each worker
    process assumed the role again and asked for a code of its own, where it has no standard
    input (the protocol's) - "unexpected EOFError" (now "no code"), exit 2; on a terminal,
    one prompt a process at once. Now the workers take the role's credentials from the main
    process: one code, the run completes, every request signed by the one role's key."""
    objects = numbered_objects(60)
    put_objects(s3, buckets.source, objects)
    config = aws_env / "config"
    config.write_text(config.read_text() + MFA_PROFILE)
    # (slow enough that the workers are ready before the main process has copied all)
    with run_proxy(s3_server.endpoint, latency=0.1) as source_proxy:
        args = _args(s3_server, buckets, tmp_path / "w", "--source-profile", "mfa")
        args += ["--dest-profile", "dst", "--processes", "2", "--concurrency", "4", "--debug"]
        args += ["--source-endpoint-url", source_proxy.endpoint]
        process = _start(args, s3_server, subprocess.PIPE)
        _, err = process.communicate("123456\n", timeout=120)
        source_keys = {r.access_key for r in source_proxy.requests}
    assert process.returncode == 0, err
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(objects)
    copied = re.search(r"and (\d+) in worker pid", err)  # (--debug says it)
    assert copied is not None and int(copied.group(1)) > 0, err
    assert len(source_keys) == 1, source_keys
    assert _caller(s3_server, source_keys.pop() or "").startswith(
        "arn:aws:sts::444444444444:assumed-role/backup/"
    )


@pytest.mark.parametrize(
    ("name", "encoding", "says"),
    [
        ("config", "utf-8-sig", "byte-order mark"),
        ("credentials", "utf-8-sig", "byte-order mark"),
        ("config", "utf-16", "UTF-16"),
    ],
    ids=["config-bom", "credentials-bom", "config-utf16"],
)
def test_an_aws_file_saved_with_a_bom_says_so(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    aws_env: Path,
    name: str,
    encoding: str,
    says: str,
) -> None:
    """A config or credentials file saved by a Windows editor "UTF-8 with BOM" (Notepad's
    choice for years), or by Windows PowerShell's ``>`` (UTF-16): botocore cannot parse it,
    and the run said "cannot create the source S3 client: Unable to parse config file: PATH;
    check the source's endpoint URL, --region and profile": none of which is wrong, and the
    file looks right in any editor. Now the line says what is wrong with the file and how to
    save it. (Windows line ends, also in these files, are read as they are.)"""
    put_objects(s3, buckets.source, numbered_objects(3))
    path = aws_env / name
    path.write_bytes(path.read_text().replace("\n", "\r\n").encode(encoding))
    args = _args(s3_server, buckets, tmp_path / "w", "--source-profile", "src")
    done = subprocess.run(
        [*CLI, *args, "--dest-profile", "dst"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert str(path) in line and says in line and "save it" in line, line
    assert "endpoint URL" not in line, line
    assert "secret" not in line
    path.write_bytes(path.read_bytes().decode(encoding).encode())  # saved as UTF-8
    again = subprocess.run(
        [*CLI, *args, "--dest-profile", "dst"], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest) == 3


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
def test_a_profile_without_keys_is_named(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path, fast_path: bool
) -> None:
    """The usual slip: the keys written in the credentials file under ``[profile prod]``
    (the config file's spelling; the credentials file's is ``[prod]``). The profile exists
    (its region, in the config file) and has no credentials: the run said "no credentials
    for the destination; set --dest-profile or the AWS_* variables", to an operator who had
    set --dest-profile. Now the line names the profile and where its keys go."""
    put_objects(s3, buckets.source, numbered_objects(3))
    (aws_env / "config").write_text(
        (aws_env / "config").read_text() + "\n[profile prod]\nregion = us-east-1\n"
    )
    with (aws_env / "credentials").open("a") as handle:
        handle.write(
            "[profile prod]\naws_access_key_id = AKIAPROD00000000TEST\n"
            "aws_secret_access_key = prod-secret-0123456789abcdefghijklmnopqr\n"
        )
    args = _args(s3_server, buckets, tmp_path / "w", "--source-profile", "src")
    args += ["--dest-profile", "prod", *(() if fast_path else ("--no-fast-path",))]
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "no credentials for the destination" in line, line
    assert "'prod'" in line and "[prod]" in line and "--dest-profile" in line, line
    assert "prod-secret" not in done.stderr


_PRINTS_TO_STDERR = """
import json, sys
sys.stderr.write("vault: unlocked with stderr-secret-Hq4ZpX for AKIASOURCE00000TEST\\n")
print(json.dumps({"Version": 1, "AccessKeyId": sys.argv[1], "SecretAccessKey": sys.argv[2]}))
"""


def test_each_side_runs_as_the_identity_its_profile_names(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path
) -> None:
    """The cross-account set-up as written in ~/.aws: the source a role two deep (a role
    assumed with the credentials of another, itself assumed with a ``credential_process``'s,
    which prints to its stderr), with ``role_session_name``, ``external_id`` and
    ``duration_seconds``; the destination a role assumed with the environment's keys
    (``credential_source = Environment``). AWS_PROFILE and the AWS_* keys in the environment
    too: a profile given wins over them (the README's table says so). Each side's requests
    are signed as its role, on both paths, in a dry run and by ``checkpoint verify``; what
    the process printed and the keys reach no output, report or checkpoint."""
    put_objects(s3, buckets.source, numbered_objects(5))
    script = aws_env / "vault.py"
    script.write_text(_PRINTS_TO_STDERR)
    key, secret = ACCESS_KEYS["src"]
    (aws_env / "config").write_text(
        (aws_env / "config").read_text()
        + f"\n[profile vault]\nregion = us-east-1\ncredential_process = {sys.executable} "
        f"{script} {key} {secret}\n"
        "\n[profile hop]\nregion = us-east-1\nsource_profile = vault\n"
        "role_arn = arn:aws:iam::111111111111:role/hop\n"
        "\n[profile reader]\nregion = us-east-1\nsource_profile = hop\n"
        "role_arn = arn:aws:iam::222222222222:role/reader\nrole_session_name = nightly\n"
        "external_id = ext-7Qw\nduration_seconds = 3600\n"
        "\n[profile writer]\nregion = us-east-1\ncredential_source = Environment\n"
        "role_arn = arn:aws:iam::333333333333:role/writer\n"
    )
    env_key, env_secret = ACCESS_KEYS["dst"]
    env = dict(
        os.environ,
        AWS_ENDPOINT_URL_STS=s3_server.endpoint,
        AWS_PROFILE="default",
        AWS_ACCESS_KEY_ID=env_key,
        AWS_SECRET_ACCESS_KEY=env_secret,
    )
    reader = "arn:aws:sts::222222222222:assumed-role/reader/nightly"
    writer = "arn:aws:sts::333333333333:assumed-role/writer/"
    base = tmp_path / "w"
    report = tmp_path / "report.json"
    outputs: list[str] = []
    with run_proxy(s3_server.endpoint) as source, run_proxy(s3_server.endpoint) as dest:
        args = _args(s3_server, buckets, base)[:-2]  # (each side's endpoint, its proxy)
        args += ["--report", str(report)]
        args += ["--source-endpoint-url", source.endpoint, "--dest-endpoint-url", dest.endpoint]
        args += ["--source-profile", "reader", "--dest-profile", "writer"]
        for extra in (("--dry-run",), ("--no-fast-path",), ()):
            source.requests.clear()
            dest.requests.clear()
            done = subprocess.run(
                [*CLI, *args, *extra], capture_output=True, text=True, timeout=120, env=env
            )
            assert done.returncode == 0, done.stderr
            outputs += [done.stdout, done.stderr]
            outputs += [report.read_text()] if report.exists() else []
            signed = (
                {r.access_key or "" for r in source.requests},
                {r.access_key or "" for r in dest.requests},
            )
            assert signed[0] and all(_caller(s3_server, k) == reader for k in signed[0]), extra
            assert signed[1] and all(_caller(s3_server, k).startswith(writer) for k in signed[1])
        assert assert_same_objects(s3, buckets.source, buckets.dest) == 5
        archived = next((base / "checkpoints" / "archive").iterdir())
        source.requests.clear()
        dest.requests.clear()
        verify = subprocess.run(
            [sys.executable, "-m", "asyncbackup", "checkpoint", "verify", str(archived)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert verify.returncode == 0, verify.stderr
        assert all(_caller(s3_server, r.access_key or "") == reader for r in source.requests)
        assert dest.requests
        assert all(_caller(s3_server, r.access_key or "").startswith(writer) for r in dest.requests)
    outputs += [verify.stdout, verify.stderr, archived.read_text()]
    for text in outputs:
        for secret_text in ("stderr-secret-Hq4ZpX", secret, env_secret, "vault: unlocked"):
            assert secret_text not in text


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
def test_an_sts_endpoint_out_of_reach_is_not_taken_for_the_bucket(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path, fast_path: bool
) -> None:
    """A role profile run where STS cannot be reached (a private subnet with an S3 gateway
    endpoint and none for STS, a firewall, a mistyped AWS_ENDPOINT_URL_STS): the run said
    "cannot reach the source endpoint (EndpointConnectionError); check the endpoint URL and
    the network", of an S3 endpoint that answers. Now the line names the URL that could not
    be reached and that it is where the profile's credentials come from."""
    put_objects(s3, buckets.source, numbered_objects(3))
    (aws_env / "config").write_text(
        (aws_env / "config").read_text() + "\n[profile reader]\nregion = us-east-1\n"
        "role_arn = arn:aws:iam::222222222222:role/reader\nsource_profile = src\n"
    )
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        sts = f"http://127.0.0.1:{closed.getsockname()[1]}"
    args = _args(s3_server, buckets, tmp_path / "w", "--source-profile", "reader")
    args += ["--dest-profile", "dst", *(() if fast_path else ("--no-fast-path",))]
    env = dict(os.environ, AWS_ENDPOINT_URL_STS=sts, AWS_MAX_ATTEMPTS="1")  # (STS's retries)
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    line = one_error_line(
        "\n".join(x for x in done.stderr.splitlines() if not x.startswith("progress:"))
    )
    assert sts in line and "source credentials" in line and "--source-profile" in line, line
    assert "cannot reach the source endpoint" not in line, line


async def test_a_role_with_mfa_that_sts_refuses_is_said_once(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path
) -> None:
    """A role with an MFA device that STS refuses to give (a mistyped code, a trust policy
    that does not name the user), the code given on standard input: the refusal was
    retried, each time asking for another code, and the run ended saying that no code had
    come on standard input, not that STS refused. Now the refusal is said, the code asked
    for once."""
    put_objects(s3, buckets.source, numbered_objects(3))
    config = aws_env / "config"
    config.write_text(config.read_text() + MFA_PROFILE)
    sts = _RefusingSts(s3_server.endpoint, refuse=True)
    await sts.start()
    args = _args(s3_server, buckets, tmp_path / "w", "--source-profile", "mfa")
    try:
        process = await asyncio.create_subprocess_exec(
            *CLI,
            *args,
            "--dest-profile",
            "dst",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, AWS_ENDPOINT_URL_STS=sts.endpoint),
            start_new_session=True,  # (no terminal)
        )
        _, err = await asyncio.wait_for(process.communicate(b"123456\n"), 60)
    finally:
        await sts.close()
    stderr = err.decode()
    assert process.returncode == 2, stderr
    line = one_error_line(stderr)
    assert "cannot get the source credentials" in line and "--source-profile" in line, line
    assert "AssumeRole was refused (InvalidClientTokenId" in line, line

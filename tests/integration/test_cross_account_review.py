"""Cross-account set-ups as operators write them in ``~/.aws/config``: roles assumed from
moto's STS (server mode), an MFA device, SSO sessions, files saved by other editors. Each
side must run with its own identity (told by the access key id each proxy saw, and moto's
GetCallerIdentity for it), and a set-up that cannot work must stop in one line that says
what to do, exit 2, with no secret anywhere."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Buckets, S3Server
from tests.helpers import numbered_objects, put_objects
from tests.reliability import CLI, one_error_line

MFA_PROFILE = (
    "\n[profile mfa]\nregion = us-east-1\nrole_arn = arn:aws:iam::444444444444:role/backup\n"
    "source_profile = src\nmfa_serial = arn:aws:iam::444444444444:mfa/operator\n"
)


def _args(s3_server: S3Server, buckets: Buckets, base: Path, *extra: str) -> list[str]:
    return [
        "data",
        "--source-bucket",
        buckets.source,
        "--dest-bucket",
        buckets.dest,
        "--base-local-path",
        str(base),
        "--endpoint-url",
        s3_server.endpoint,
        *extra,
    ]


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

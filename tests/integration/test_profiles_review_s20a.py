"""Profiles and credentials left over by earlier reviews: an SSO session that ends mid-run,
profiles botocore cannot use, ``--direct`` with the profile in the environment. The SSO
portal is a small HTTP server of the test's (``GetRoleCredentials``, as botocore asks it);
S3 is moto behind the recording proxy."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests import credproc
from tests.conftest import ACCESS_KEYS, Buckets, S3Server
from tests.faulty_proxy import run_cli_async
from tests.helpers import assert_same_objects, cli_args, numbered_objects, put_objects
from tests.integration.test_credential_refresh_review import _run_with_process_failing
from tests.integration.test_cross_account_review import SSO_PROFILES
from tests.proxy import S3Proxy, run_proxy
from tests.reliability import one_error_line, put_parallel, run_cli

START_URL = "https://corp.awsapps.com/start"


class SsoPortal:
    """AWS SSO's portal as botocore asks it for role credentials: each answer's credentials
    a new key, expiring ``lifetime`` seconds past the 10 minutes within which botocore must
    refresh them (so that their refresh is due that soon); once ``ended``, the session is
    over: 401 UnauthorizedException, as AWS answers a token whose session ended."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self.ended = False
        self.calls = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _credentials(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.ended or request.headers.get("x-amz-sso_bearer_token") != "sso-token":
            return web.json_response(
                {"message": "Session token not found or invalid"},
                status=401,
                headers={"x-amzn-ErrorType": "UnauthorizedException"},
            )
        expiration = int((time.time() + 600 + self.lifetime) * 1000)
        credentials = {
            "accessKeyId": f"ASIASSO{self.calls:012d}",
            "secretAccessKey": "sso-secret-0123456789abcdefghijklmnopqrstuv",
            "sessionToken": f"sso-session-token-{self.calls}",
            "expiration": expiration,
        }
        return web.json_response({"roleCredentials": credentials})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/federation/credentials", self._credentials)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def sso_portal() -> AsyncIterator[SsoPortal]:
    portal = SsoPortal(lifetime=1.0)
    await portal.start()
    try:
        yield portal
    finally:
        await portal.close()


def _signed_in(aws_env: Path) -> dict[str, str]:
    """The environment of a machine signed in to the SSO profiles (``aws sso login``): their
    tokens in ``~/.aws/sso/cache``, good for hours."""
    config = aws_env / "config"
    config.write_text(config.read_text() + SSO_PROFILES)
    cache = aws_env / ".aws" / "sso" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    token = {
        "startUrl": START_URL,
        "region": "us-east-1",
        "accessToken": "sso-token",
        "expiresAt": "2099-01-01T00:00:00Z",
    }
    for name in (START_URL, "corp"):  # the legacy profile's key, the sso-session's
        digest = hashlib.sha1(name.encode()).hexdigest()
        (cache / f"{digest}.json").write_text(json.dumps(token))
    return {"HOME": str(aws_env)}


@pytest.mark.parametrize(
    ("profile", "side", "extra"),
    [
        ("sso", "source", ()),
        ("sso-legacy", "source", ("--no-fast-path",)),
        ("sso", "dest", ("--no-fast-path",)),
        ("sso-legacy", "dest", ("--processes", "2")),
    ],
    ids=["session-source-fast", "legacy-source-botocore", "session-dest-botocore", "processes"],
)
async def test_an_sso_session_over_mid_run_names_the_profile_to_sign_in(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    aws_env: Path,
    sso_portal: SsoPortal,
    profile: str,
    side: str,
    extra: tuple[str, ...],
) -> None:
    """An SSO profile whose session ends during the run (its token's hours are over, or it
    was signed out): the run stopped, exit 3, saying "sign in with: aws sso login --profile
    PROFILE", the word PROFILE itself, where the start-up check's line names the profile.
    Now the mid-run line names it too (the SSO profile the failure came from)."""
    objects = {f"data/o-{i:03d}": os.urandom(300 + i) for i in range(80)}
    put_parallel(s3, buckets.source, objects)
    env = dict(os.environ, **_signed_in(aws_env), AWS_ENDPOINT_URL_SSO=sso_portal.endpoint)
    source, dest = (profile, "dst") if side == "source" else ("src", profile)
    proxy = S3Proxy(s3_server.endpoint, latency=0.15)
    await proxy.start()
    args = [
        "s3",
        "data",
        "--source-bucket",
        buckets.source,
        "--dest-bucket",
        buckets.dest,
        "--base-local-path",
        str(tmp_path / "w"),
        "--endpoint-url",
        proxy.endpoint,
        "--source-profile",
        source,
        "--dest-profile",
        dest,
        "--concurrency",
        "4",
        "--max-attempts",
        "3",
        *extra,
    ]

    async def end_session() -> None:
        started = asyncio.get_running_loop().time()
        # once copies are being made (by every worker process: all have started)
        while (
            len(proxy.seen(method="PUT")) < 10 and asyncio.get_running_loop().time() - started < 30
        ):
            await asyncio.sleep(0.02)
        sso_portal.ended = True

    try:
        ender = asyncio.create_task(end_session())
        done = await run_cli_async(args, env=env)
        await ender
        sso_portal.ended = False
        again = await run_cli_async(args, env=env)
    finally:
        await proxy.close()
    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "stopping" in last and "CredentialsNotRefreshed" in last, last
    assert f"aws sso login --profile {profile}" in last, last
    assert again.returncode == 0, again.stderr  # signed in again, the run resumes
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(objects)


BROKEN_PROFILES = (
    "\n[profile nosource]\nrole_arn = arn:aws:iam::444444444444:role/backup\n"
    "region = us-east-1\n"
    "\n[profile chained]\nrole_arn = arn:aws:iam::444444444444:role/backup\n"
    "source_profile = nosource\nregion = us-east-1\n"
    "\n[profile gone]\nrole_arn = arn:aws:iam::444444444444:role/backup\n"
    "source_profile = nosuch\nregion = us-east-1\n"
    "\n[profile loop1]\nrole_arn = arn:aws:iam::444444444444:role/backup\n"
    "source_profile = loop2\n"
    "\n[profile loop2]\nrole_arn = arn:aws:iam::444444444444:role/backup\n"
    "source_profile = loop1\n"
)


@pytest.mark.parametrize(
    ("flags", "variables", "named", "fix"),
    [
        (("--source-profile", "nosource"), {}, "nosource", "source_profile nor credential_source"),
        (("--source-profile", "chained"), {}, "nosource", "source_profile nor credential_source"),
        ((), {"AWS_PROFILE": "nosource"}, "nosource", "source_profile nor credential_source"),
        (("--source-profile", "gone"), {}, "gone", "nosuch"),
        (("--source-profile", "loop1"), {}, "loop1", "loop"),
    ],
    ids=["no-source", "chained", "environment", "source-missing", "cycle"],
)
def test_a_role_profile_botocore_cannot_use_is_named_in_one_line(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    aws_env: Path,
    flags: tuple[str, ...],
    variables: dict[str, str],
    named: str,
    fix: str,
) -> None:
    """A profile with a ``role_arn`` that botocore cannot use (no ``source_profile`` nor
    ``credential_source``, a ``source_profile`` that does not exist, a cycle): the line was
    "cannot create the source S3 client: Partial credentials found in assume-role, missing:
    source_profile or credential_source; check the source's endpoint URL, --region and
    profile", which names no profile (the flag's own has a source_profile when the one it
    names lacks it) and sends the reader to the endpoint and the region first. Now it names
    the profile to fix, and says it is the AWS config file's; exit 2 as before."""
    config = aws_env / "config"
    config.write_text(config.read_text() + BROKEN_PROFILES)
    args = [
        "data",
        *cli_args(s3_server.endpoint, tmp_path / "w", buckets.source, buckets.dest, *flags),
        "--dest-profile",
        "dst",
    ]
    done = run_cli(args, env=dict(os.environ, **variables))
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "cannot get the source credentials" in line, line
    assert f"profile {named!r}" in line and fix in line, line
    assert "AWS config file" in line and "--region" not in line, line
    assert not s3.list_objects_v2(Bucket=buckets.dest).get("Contents")


def test_an_access_key_without_its_secret_in_the_environment_says_so(
    s3_server: S3Server, buckets: Buckets, tmp_path: Path
) -> None:
    """AWS_ACCESS_KEY_ID set without AWS_SECRET_ACCESS_KEY, for a side given no profile: the
    line says which variable is missing, and no profile is blamed."""
    args = ["data", *cli_args(s3_server.endpoint, tmp_path / "w", buckets.source, buckets.dest)]
    done = run_cli(
        [*args, "--dest-profile", "dst"], env=dict(os.environ, AWS_ACCESS_KEY_ID="AKIAONLY")
    )
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "cannot get the source credentials" in line, line
    assert "AWS_SECRET_ACCESS_KEY" in line and "profile '" not in line, line


@pytest.mark.parametrize(
    ("variables", "copies"),
    [
        ({"AWS_PROFILE": "src"}, True),
        ({"AWS_DEFAULT_PROFILE": "src", "AWS_PROFILE": "dst"}, True),
        ({"AWS_PROFILE": "dst"}, False),
        (
            {"AWS_PROFILE": "src", "AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "x"},
            False,
        ),
    ],
    ids=["same", "default-profile-first", "other-profile", "keys-in-environment"],
)
def test_direct_takes_a_profile_given_once_as_flag_and_once_by_the_environment(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    variables: dict[str, str],
    copies: bool,
) -> None:
    """``--direct`` needs one set of credentials for both sides. With AWS_PROFILE=src in the
    environment, ``--source-profile src`` and no ``--dest-profile``, both sides are profile
    src (the destination's from the environment), yet the run was refused, exit 2: "give the
    same profile ... for source and destination". Now the side given no profile counts as the
    one it resolves to: the environment's profile (AWS_DEFAULT_PROFILE first, as botocore
    reads them), unless access keys in the environment serve it, which stays refused."""
    objects = numbered_objects(5)
    put_objects(s3, buckets.source, objects)
    with run_proxy(s3_server.endpoint) as proxy:
        args = ["data", *cli_args(proxy.endpoint, tmp_path / "w", buckets.source, buckets.dest)]
        args += ["--direct", "--source-profile", "src"]
        done = run_cli(args, env=dict(os.environ, **variables))
        keys = {r.access_key for r in proxy.requests}
    if not copies:
        assert done.returncode == 2, done.stderr
        assert "--direct" in one_error_line(done.stderr)
        return
    assert done.returncode == 0, done.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(objects)
    assert keys == {ACCESS_KEYS["src"][0]}  # one identity, both sides


async def test_verify_of_a_run_given_no_profile_takes_the_credentials_of_its_own_environment(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path
) -> None:
    """A backup made with its credentials from AWS_PROFILE (no profile flag) records no
    profile: ``checkpoint verify`` then uses the credentials its own environment gives
    (another AWS_PROFILE: that one's), not the run's, and ``show`` lists no profile flag.
    The README said the checkpoint's profiles are "as the clients resolved them"."""
    objects = numbered_objects(4)
    put_objects(s3, buckets.source, objects)
    base = tmp_path / "w"
    with run_proxy(s3_server.endpoint) as proxy:
        args = ["s3", "data", *cli_args(proxy.endpoint, base, buckets.source, buckets.dest)]
        done = await run_cli_async(args, env=dict(os.environ, AWS_PROFILE="src"))
        assert done.returncode == 0, done.stderr
        assert {r.access_key for r in proxy.requests} == {ACCESS_KEYS["src"][0]}
        archived = next((base / "checkpoints" / "archive").iterdir())
        proxy.requests.clear()
        checked = await run_cli_async(
            ["checkpoint", "verify", str(archived)], env=dict(os.environ, AWS_PROFILE="dst")
        )
        assert checked.returncode == 0, checked.stderr
        assert {r.access_key for r in proxy.requests} == {ACCESS_KEYS["dst"][0]}
    shown = await run_cli_async(["checkpoint", "show", str(archived)])
    assert "profile" not in shown.stdout, shown.stdout


@pytest.mark.parametrize("extra", [(), ("--no-fast-path",)], ids=["fast", "botocore"])
def test_a_role_whose_source_is_an_sso_profile_names_the_sso_profile(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    aws_env: Path,
    extra: tuple[str, ...],
) -> None:
    """A role profile whose ``source_profile`` is an SSO profile not signed in: the line said
    "sign in with: aws sso login --profile viasso", the role's profile, which has no SSO
    settings for ``aws sso login`` to use. Now it names the SSO profile."""
    config = aws_env / "config"
    config.write_text(
        config.read_text()
        + SSO_PROFILES
        + "\n[profile viasso]\nrole_arn = arn:aws:iam::444444444444:role/backup\n"
        "source_profile = sso\nregion = us-east-1\n"
    )
    args = ["data", *cli_args(s3_server.endpoint, tmp_path / "w", buckets.source, buckets.dest)]
    args += ["--source-profile", "viasso", "--dest-profile", "dst", *extra]
    done = run_cli(args, env=dict(os.environ, HOME=str(aws_env)))  # (an SSO cache of no one)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "cannot get the source credentials" in line, line
    assert line.count("aws sso login --profile sso;") == 1, line
    assert not s3.list_objects_v2(Bucket=buckets.dest).get("Contents")


@pytest.mark.parametrize("same", [True, False], ids=["same", "other"])
def test_direct_takes_an_endpoint_given_once_as_flag_and_once_by_the_environment(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, same: bool
) -> None:
    """``--direct`` needs one endpoint for both sides. ``--source-endpoint-url URL`` with
    AWS_ENDPOINT_URL=URL in the environment (the destination's endpoint) was refused, exit
    2, though both clients send to URL. Now the endpoints the clients use are compared (as
    for a --dest-prefix onto the source); another endpoint there is still refused."""
    objects = numbered_objects(5)
    put_objects(s3, buckets.source, objects)
    with run_proxy(s3_server.endpoint) as proxy:
        environment = proxy.endpoint if same else s3_server.endpoint
        args = ["data", "--source-bucket", buckets.source, "--dest-bucket", buckets.dest]
        args += ["--base-local-path", str(tmp_path / "w"), "--direct"]
        args += ["--source-endpoint-url", proxy.endpoint]
        done = run_cli(args, env=dict(os.environ, AWS_ENDPOINT_URL=environment))
    if not same:
        assert done.returncode == 2, done.stderr
        assert "--direct" in one_error_line(done.stderr)
        assert not s3.list_objects_v2(Bucket=buckets.dest).get("Contents")
        return
    assert done.returncode == 0, done.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(objects)


@pytest.mark.parametrize("extra", [(), ("--no-fast-path",)], ids=["fast", "botocore"])
async def test_a_credential_process_failing_mid_run_names_its_profile(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    aws_env: Path,
    extra: tuple[str, ...],
) -> None:
    """Both sides' profiles with a ``credential_process`` (two accounts), the source's
    failing mid-run: the line said "the profile's credential_process failed ... run the
    command by hand to see why", naming neither the profile nor the side, so which of the two
    commands to run was a guess. Now it names the profile."""
    ledger = credproc.install(aws_env, {"csrc": 1.5, "cdst": 3600}, window=600)
    objects = {f"data/o-{i:03d}": os.urandom(300 + i) for i in range(80)}
    put_parallel(s3, buckets.source, objects)
    done, _ = await _run_with_process_failing(s3_server, buckets, tmp_path, ledger, *extra)
    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "stopping" in last and "credential_process" in last, last
    assert "'csrc'" in last and "cdst" not in last, last
    assert "secret-in-std" not in done.stderr

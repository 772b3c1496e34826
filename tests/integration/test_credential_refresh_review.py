"""Temporary credentials over a long run: they expire and are refreshed while objects are
copied, and the source and the destination have credentials of their own (another account).

The credentials come from a real ``credential_process`` (``tests/credproc.py``) that issues a
new key every time it is asked, and a proxy in front of each side refuses what S3 refuses: a
key past its life, another account's key, a token not the key's.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from asyncbackup import credprocess, run_backup
from asyncbackup.errors import FatalRunError
from tests import credproc
from tests.conftest import Buckets, S3Server
from tests.credproc import CheckingProxy
from tests.faulty_proxy import Finished, run_cli_async
from tests.helpers import assert_same_objects
from tests.proxy import S3Proxy
from tests.reliability import checkpoint_file, one_error_line, put_parallel, read_valid

LIFETIME = 1.5


async def _proxies(s3_server: S3Server, ledger: Path) -> tuple[CheckingProxy, CheckingProxy]:
    source = CheckingProxy(s3_server.endpoint, ledger=ledger, account="csrc")
    dest = CheckingProxy(s3_server.endpoint, ledger=ledger, account="cdst")
    await source.start()
    await dest.start()
    return source, dest


def _args(
    source: CheckingProxy, dest: CheckingProxy, buckets: Buckets, base: Path, *extra: str
) -> list[str]:
    return [
        "s3",
        "data",
        "--source-bucket",
        buckets.source,
        "--dest-bucket",
        buckets.dest,
        "--base-local-path",
        str(base),
        "--source-profile",
        "csrc",
        "--dest-profile",
        "cdst",
        "--source-endpoint-url",
        source.endpoint,
        "--dest-endpoint-url",
        dest.endpoint,
        *extra,
    ]


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("--no-fast-path",),
        ("--processes", "2"),
        ("--multipart-threshold", "5MiB", "--part-size", "5MiB"),
    ],
    ids=["fast", "botocore", "processes", "multipart"],
)
async def test_credentials_refreshed_during_the_run(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path, extra: Any
) -> None:
    ledger = credproc.install(aws_env, {"csrc": LIFETIME, "cdst": LIFETIME})
    if "--multipart-threshold" in extra:
        objects = {f"data/big-{i}": os.urandom(11 * 1024 * 1024) for i in range(3)}
        latency = 0.4
    else:
        objects = {f"data/o-{i:03d}": os.urandom(300 + i) for i in range(80)}
        latency = 0.15
    put_parallel(s3, buckets.source, objects)
    source, dest = await _proxies(s3_server, ledger)
    source.latency = dest.latency = latency
    try:
        done = await run_cli_async(
            _args(source, dest, buckets, tmp_path / "w", "--concurrency", "4", *extra)
        )
    finally:
        await source.close()
        await dest.close()
    assert done.returncode == 0, done.stderr
    assert source.refused == [] and dest.refused == []
    # the parts of an upload span refreshes (the source's few GETs may not)
    assert credproc.calls(ledger, "cdst") >= 2
    assert len({r.access_key for r in dest.requests}) >= 2
    if "--multipart-threshold" not in extra:
        assert credproc.calls(ledger, "csrc") >= 2
        assert len({r.access_key for r in source.requests}) >= 2
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(objects)


async def _run_with_process_failing(
    s3_server: S3Server,
    buckets: Buckets,
    tmp_path: Path,
    ledger: Path,
    *extra: str,
    grace: float = 2.0,
    mode: str = "fail",
) -> tuple[Finished, list[str]]:
    """A run whose source credentials stop refreshing a second in: the credential process
    fails from then on (its standard error quoting a secret). Returns the run and the run's
    arguments."""
    source, dest = await _proxies(s3_server, ledger)
    source.latency = dest.latency = 0.15
    source.grace = grace
    args = _args(source, dest, buckets, tmp_path / "w", "--concurrency", "4", *extra)
    args += ["--report", str(tmp_path / "report.json"), "--max-attempts", "3"]

    async def break_it() -> None:
        # mid-run: once the copying has started (a fixed second was the start-up itself on
        # a loaded machine, which ends with exit 2 instead), and a second after the start
        started = asyncio.get_running_loop().time()
        while not dest.seen(method="PUT") and asyncio.get_running_loop().time() - started < 30:
            await asyncio.sleep(0.02)
        await asyncio.sleep(max(0.0, 1.0 - (asyncio.get_running_loop().time() - started)))
        credproc.control(ledger, "csrc", mode)

    try:
        breaker = asyncio.create_task(break_it())
        done = await run_cli_async(args)
        await breaker
        credproc.control(ledger, "csrc", "")
        again = await run_cli_async(args)
    finally:
        await source.close()
        await dest.close()
    assert again.returncode == 0, again.stderr
    return done, args


@pytest.mark.parametrize(
    ("fast_path", "mode"),
    [(True, "fail"), (False, "fail"), (True, "garbage"), (False, "garbage")],
    ids=["fast", "botocore", "fast-garbage", "botocore-garbage"],
)
async def test_credentials_that_cannot_be_refreshed_stop_the_run(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    aws_env: Path,
    fast_path: bool,
    mode: str,
) -> None:
    """Credentials that could no longer be refreshed failed every object left, one error
    each (68 of 80 here, exit 1, "completed_with_errors"), each quoting the credential
    process's standard error into the summary, the checkpoint and the report. The run now
    stops at the first object that meets it (after its retries), exit 3, one line that does
    not repeat the process's output; the checkpoint is valid and a second run completes. A
    process printing a message instead of JSON ("garbage") stopped the run with "unexpected
    JSONDecodeError: Expecting value: line 1 column 1 (char 0)"."""
    # Expiration 600 s ahead: botocore's next refresh is mandatory (the credentials are
    # about to expire), so its failure fails the request
    ledger = credproc.install(aws_env, {"csrc": LIFETIME, "cdst": 3600}, window=600)
    objects = {f"data/o-{i:03d}": os.urandom(300 + i) for i in range(80)}
    put_parallel(s3, buckets.source, objects)
    extra = () if fast_path else ("--no-fast-path",)
    done, _ = await _run_with_process_failing(
        s3_server, buckets, tmp_path, ledger, *extra, mode=mode
    )
    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "stopping" in last and "credential_process of profile 'csrc' failed" in last, last
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert "secret-in-std" not in path.read_text(errors="replace"), path
    assert "secret-in-std" not in done.stdout
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(objects)


@pytest.mark.parametrize("period", ["advisory", "mandatory"])
async def test_a_failing_refresh_logs_no_traceback_and_no_secret(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    aws_env: Path,
    period: str,
) -> None:
    """botocore logs a failed refresh as a warning with the provider's exception as a
    traceback, its last line a failed credential process's standard error (here a secret),
    at every request while the process fails: dozens of tracebacks in a short run. Now a
    failure in the advisory period (the credentials still good for minutes: the run goes
    on with them) is said once, in one line without the error; one in the mandatory period
    (about to expire) only by the run's own line."""
    window = 900 if period == "advisory" else 600
    ledger = credproc.install(aws_env, {"csrc": LIFETIME, "cdst": 3600}, window=window)
    objects = {f"data/o-{i:03d}": os.urandom(300 + i) for i in range(80)}
    put_parallel(s3, buckets.source, objects)
    done, _ = await _run_with_process_failing(s3_server, buckets, tmp_path, ledger, grace=60)
    assert "secret-in-stderr" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    warned = [line for line in done.stderr.splitlines() if "refreshing the temporary" in line]
    if period == "advisory":  # the credentials the proxy takes for a minute more
        assert done.returncode == 0, done.stderr
        assert len(warned) == 1, done.stderr
        assert credproc.calls(ledger, "csrc") >= 1
    else:
        assert done.returncode == 3, done.stderr
        # (an advisory refresh failed before: the credentials had less than 15 min left)
        assert len(warned) <= 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == len(warned) + 1, done.stderr
        assert "CredentialsNotRefreshed" in lines[-1]
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(objects)


async def test_direct_copies_refresh_the_credentials(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path
) -> None:
    """--direct: one profile for both sides; the copies go on over refreshes."""
    ledger = credproc.install(aws_env, {"csrc": LIFETIME})
    objects = {f"data/o-{i:03d}": os.urandom(300 + i) for i in range(60)}
    put_parallel(s3, buckets.source, objects)
    proxy = CheckingProxy(s3_server.endpoint, ledger=ledger, account="csrc", latency=0.2)
    await proxy.start()
    args = ["s3", "data", "--source-bucket", buckets.source, "--dest-bucket", buckets.dest]
    args += ["--base-local-path", str(tmp_path / "w"), "--source-profile", "csrc"]
    args += ["--dest-profile", "csrc", "--endpoint-url", proxy.endpoint, "--direct"]
    args += ["--concurrency", "4"]
    try:
        done = await run_cli_async(args)
    finally:
        await proxy.close()
    assert done.returncode == 0, done.stderr
    assert proxy.refused == []
    assert credproc.calls(ledger, "csrc") >= 2
    assert len({r.access_key for r in proxy.requests if r.method == "PUT"}) >= 2
    assert "x-amz-copy-source" in proxy.requests[-1].headers
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(objects)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
async def test_a_hanging_credential_process_stops_the_run(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    aws_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fast_path: bool,
) -> None:
    """botocore and aiobotocore wait for a credential process without a timeout: one that
    hung mid-run (an MFA prompt nobody answers) held every request that needed fresh
    credentials, and the run stalled for good, saying nothing (here: no end in 40 s, 12
    requests made). Now the run warns that it waits, kills the process after
    ``PROCESS_TIMEOUT`` and stops (exit 3 from the command line), the checkpoint valid."""
    monkeypatch.setattr(credprocess, "PROCESS_TIMEOUT", 3.0)
    monkeypatch.setattr(credprocess, "NOTICE_AFTER", 1.0)
    ledger = credproc.install(aws_env, {"csrc": LIFETIME, "cdst": 3600}, window=600)
    objects = {f"data/o-{i:03d}": os.urandom(300 + i) for i in range(80)}
    put_parallel(s3, buckets.source, objects)
    source, dest = await _proxies(s3_server, ledger)
    source.latency = dest.latency = 0.15

    async def hang() -> None:
        await asyncio.sleep(1.0)
        credproc.control(ledger, "csrc", "hang")

    options: dict[str, Any] = {
        "source_bucket": buckets.source,
        "source_path": "data",
        "dest_bucket": buckets.dest,
        "base_local_path": tmp_path / "w",
        "source_profile": "csrc",
        "dest_profile": "cdst",
        "source_endpoint_url": source.endpoint,
        "dest_endpoint_url": dest.endpoint,
        "concurrency": 4,
        "max_attempts": 2,
        "fast_path": fast_path,
    }
    try:
        hanging = asyncio.create_task(hang())
        with pytest.raises(FatalRunError) as stopped:
            await asyncio.wait_for(run_backup(**options), 60)
        await hanging
        await asyncio.sleep(credprocess.PROCESS_TIMEOUT + 1)  # one the run left is stopped too
        alive = credproc.kill_hung(ledger, "csrc")
        state = read_valid(checkpoint_file(tmp_path / "w", buckets.source, "data"))
        credproc.control(ledger, "csrc", "")
        report = await run_backup(**options)
    finally:
        credproc.kill_hung(ledger, "csrc")
        await source.close()
        await dest.close()
    assert alive == 0  # each was stopped
    assert "CredentialsNotRefreshed" in str(stopped.value)
    assert "gave no credentials in 3 s" in str(stopped.value)
    assert "waiting for the profile's credential_process" in caplog.text
    assert 0 < sum(state.files.values()) < len(objects)
    assert report.status == "completed"
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(objects)


async def test_verify_refreshes_the_credentials_of_each_side(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path
) -> None:
    """``checkpoint verify`` with each side's profile: requests a refresh apart are signed
    with each side's own new keys."""
    ledger = credproc.install(aws_env, {"csrc": LIFETIME, "cdst": LIFETIME})
    objects = {f"data/o-{i:03d}": os.urandom(300 + i) for i in range(20)}
    put_parallel(s3, buckets.source, objects)
    source, dest = await _proxies(s3_server, ledger)
    try:
        done = await run_cli_async(_args(source, dest, buckets, tmp_path / "w"))
        assert done.returncode == 0, done.stderr
        source.latency = dest.latency = 2 * LIFETIME
        checkpoint = next(p for p in (tmp_path / "w").rglob("*checkpoint*") if p.is_file())
        command = ["checkpoint", "verify", str(checkpoint), "--source-profile", "csrc"]
        command += ["--dest-profile", "cdst", "--source-endpoint-url", source.endpoint]
        command += ["--dest-endpoint-url", dest.endpoint]
        verified = await run_cli_async(command)
    finally:
        await source.close()
        await dest.close()
    assert verified.returncode == 0, verified.stderr + verified.stdout
    assert source.refused == [] and dest.refused == []
    assert len({r.access_key for r in source.requests}) >= 2
    assert len({r.access_key for r in dest.requests}) >= 2


@pytest.mark.parametrize("mode", ["fail", "garbage"])
async def test_a_credential_process_failing_at_the_start_is_not_quoted(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path, mode: str
) -> None:
    """The process failing from the start: the run's one error line (and the --report file)
    quoted what it printed on its standard error, here a secret. One printing a message
    instead of JSON was "cannot create the source S3 client: Expecting value: line 1 column
    1 (char 0); check the source's endpoint URL, --region and profile"."""
    ledger = credproc.install(aws_env, {"csrc": LIFETIME, "cdst": 3600})
    credproc.control(ledger, "csrc", mode)
    put_parallel(s3, buckets.source, {"data/a": b"a"})
    source, dest = await _proxies(s3_server, ledger)
    report = tmp_path / "report.json"
    try:
        done = await run_cli_async(
            _args(source, dest, buckets, tmp_path / "w", "--report", str(report))
        )
    finally:
        await source.close()
        await dest.close()
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "cannot get the source credentials" in line
    assert "credential_process of profile 'csrc' failed" in line, line
    assert "--source-profile" in line
    assert "secret-in-std" not in done.stderr + done.stdout + report.read_text()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
async def test_credentials_given_expired_by_their_provider(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    aws_env: Path,
    fast_path: bool,
) -> None:
    """A provider that gives credentials that expired already (a helper's stale cache, a
    clock far off): botocore raises a bare RuntimeError, and the run stopped with
    "unexpected RuntimeError: Credentials were refreshed, but the refreshed credentials are
    still expired." after botocore's own warning, mid-run and at the start alike (exit 3
    there too). Now it is credentials that cannot be refreshed: mid-run exit 3, at the start
    exit 2, each one line."""
    ledger = credproc.install(aws_env, {"csrc": LIFETIME, "cdst": 3600}, window=600)
    put_parallel(s3, buckets.source, {f"data/o-{i:03d}": os.urandom(300 + i) for i in range(80)})
    extra = () if fast_path else ("--no-fast-path",)
    done, _ = await _run_with_process_failing(
        s3_server, buckets, tmp_path, ledger, *extra, mode="stale"
    )
    assert done.returncode == 3, done.stderr
    line = one_error_line(done.stderr)
    # (the listing's page, or an object's copy, meets it first)
    assert "stopping" in line and "CredentialsNotRefreshed" in line, line
    assert "expired already" in line, line
    credproc.control(ledger, "csrc", "stale")
    source, dest = await _proxies(s3_server, ledger)
    try:
        at_start = await run_cli_async(
            _args(source, dest, buckets, tmp_path / "w2", *extra)  # its first request
        )
    finally:
        await source.close()
        await dest.close()
    assert at_start.returncode == 2, at_start.stderr
    line = one_error_line(at_start.stderr)
    assert "cannot get the source credentials" in line and "expired already" in line, line


async def test_a_role_assumed_with_mfa_that_expires_stops_the_run(
    s3_server: S3Server, s3: Any, buckets: Buckets, tmp_path: Path, aws_env: Path
) -> None:
    """A profile whose role needs an MFA code (``mfa_serial``): botocore asks for the code
    once, and cannot renew the role's credentials when they expire (an hour by default), a
    ``RefreshWithMFAUnsupportedError`` at every request. It failed every object left (60 of
    80 here, exit 1). Now the run stops, saying what to do (exit 3). The role is assumed from
    moto's STS, for 602 s: botocore renews credentials with less than 10 min left."""
    objects = {f"data/o-{i:03d}": os.urandom(300 + i) for i in range(80)}
    put_parallel(s3, buckets.source, objects)
    config = aws_env / "config"
    config.write_text(
        config.read_text() + "\n[profile mfa]\nregion = us-east-1\n"
        "role_arn = arn:aws:iam::123456789012:role/backup\nsource_profile = src\n"
        "mfa_serial = arn:aws:iam::123456789012:mfa/operator\nduration_seconds = 602\n"
        "parameter_validation = false\n"  # (STS takes 900 s at least)
    )
    proxy = S3Proxy(s3_server.endpoint, latency=0.15)
    await proxy.start()
    args = ["s3", "data", "--source-bucket", buckets.source, "--dest-bucket", buckets.dest]
    args += ["--base-local-path", str(tmp_path / "w"), "--endpoint-url", proxy.endpoint]
    args += ["--source-profile", "mfa", "--dest-profile", "dst", "--concurrency", "4"]
    try:
        # no terminal (a session of its own): botocore reads the MFA code from stdin
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncbackup",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, AWS_ENDPOINT_URL_STS=s3_server.endpoint),
            start_new_session=True,
        )
        _, err = await asyncio.wait_for(process.communicate(b"123456\n"), 90)
    finally:
        await proxy.close()
    stderr = err.decode()
    assert process.returncode == 3, stderr
    last = stderr.strip().splitlines()[-1]
    assert "stopping: CredentialsNotRefreshed" in last and "mfa_serial" in last, last
    assert "duration_seconds" in last
    assert any(r.access_key and r.access_key.startswith("ASIA") for r in proxy.requests)
    state = read_valid(checkpoint_file(tmp_path / "w", buckets.source, "data"))
    assert 0 < sum(state.files.values()) < len(objects)


_STS_REFUSAL = (
    '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender'
    "</Type><Code>InvalidClientTokenId</Code><Message>The security token included in the "
    "request is invalid.</Message></Error><RequestId>proxy</RequestId></ErrorResponse>"
)


@dataclass
class _RefusingSts(S3Proxy):
    """moto's STS, until ``refuse``: then every request is answered as STS answers keys
    that were deactivated (403 InvalidClientTokenId)."""

    refuse: bool = False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not self.refuse:
            return await super()._handle(request)
        await request.read()
        return web.Response(status=403, body=_STS_REFUSAL.encode(), content_type="text/xml")


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "botocore"])
async def test_a_role_that_sts_no_longer_gives_stops_the_run(
    s3_server: S3Server,
    s3: Any,
    buckets: Buckets,
    tmp_path: Path,
    aws_env: Path,
    fast_path: bool,
) -> None:
    """A profile assuming a role (``role_arn``, ``source_profile``) whose renewal STS refuses
    mid-run (the source profile's keys deactivated, the role's trust changed): the error was
    taken for the S3 request's own, one object's, and every object left failed with it (52
    of 80 here, exit 1). Now the run stops (exit 3), naming the refused AssumeRole."""
    objects = {f"data/o-{i:03d}": os.urandom(300 + i) for i in range(80)}
    put_parallel(s3, buckets.source, objects)
    config = aws_env / "config"
    config.write_text(
        config.read_text() + "\n[profile role]\nregion = us-east-1\n"
        "role_arn = arn:aws:iam::123456789012:role/backup\nsource_profile = src\n"
        "duration_seconds = 602\nparameter_validation = false\n"  # (STS takes 900 s at least)
    )
    proxy = S3Proxy(s3_server.endpoint, latency=0.15)
    sts = _RefusingSts(s3_server.endpoint)
    await proxy.start()
    await sts.start()
    args = ["s3", "data", "--source-bucket", buckets.source, "--dest-bucket", buckets.dest]
    args += ["--base-local-path", str(tmp_path / "w"), "--endpoint-url", proxy.endpoint]
    args += ["--source-profile", "role", "--dest-profile", "dst", "--concurrency", "4"]
    args += ["--max-attempts", "2", *(() if fast_path else ("--no-fast-path",))]

    async def refuse() -> None:  # mid-run: once the first copy is on its way (under load a
        # fixed second was still the start-up, whose refusal is exit 2, not 3)
        while not any(r.method == "PUT" for r in list(proxy.requests)):
            await asyncio.sleep(0.05)
        sts.refuse = True

    try:
        refusing = asyncio.create_task(refuse())
        done = await run_cli_async(args, env=dict(os.environ, AWS_ENDPOINT_URL_STS=sts.endpoint))
        await refusing
        sts.refuse = False
        again = await run_cli_async(args, env=dict(os.environ, AWS_ENDPOINT_URL_STS=sts.endpoint))
    finally:
        await proxy.close()
        await sts.close()
    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "stopping" in last and "CredentialsNotRefreshed" in last, last
    assert "AssumeRole was refused (InvalidClientTokenId" in last, last
    assert again.returncode == 0, again.stderr
    assert assert_same_objects(s3, buckets.source, buckets.dest) == len(objects)

"""`make demo`: a real backup on a local S3 server, interrupted, inspected and resumed.

1. starts a local S3 server (moto's server mode) on a free loopback port;
2. fills `company-data-db` with sample data under `Projects/TeamA/2024Q1/`;
3. runs `backup-s3` into `company-archive` with the `prod` profile, and interrupts it (SIGINT)
   part-way, as an operator pressing Ctrl-C would;
4. shows the checkpoint it left;
5. runs the same command again: it resumes, skipping what is done;
6. checks that the destination holds exactly the source's objects, and stops the server.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import orjson

from asyncbackup import AsyncBackupError, read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("ASYNCBACKUP_DEMO_DIR", ROOT / "demo-work"))
SOURCE, DEST, PREFIX = "company-data-db", "company-archive", "Projects/TeamA/2024Q1"
BIN = Path(sys.executable).parent


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def start_server() -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "local_s3.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert server.stdout is not None
    return server, f"http://127.0.0.1:{int(server.stdout.readline())}"


def write_profiles() -> dict[str, str]:
    """Two credential sets, like two accounts: `default` reads, `prod` writes."""
    aws = WORK / "aws"
    aws.mkdir(parents=True)
    (aws / "credentials").write_text(
        "[default]\naws_access_key_id = AKIADEMOSOURCE\naws_secret_access_key = demo-src\n\n"
        "[prod]\naws_access_key_id = AKIADEMODEST\naws_secret_access_key = demo-dest\n"
    )
    (aws / "config").write_text(
        "[default]\nregion = us-east-1\n\n[profile prod]\nregion = us-east-1\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE=str(aws / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(aws / "credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def fill(s3: Any) -> int:
    s3.create_bucket(Bucket=SOURCE)
    s3.create_bucket(Bucket=DEST)
    count = 0
    for quarter_day in range(60):
        for n in range(8):
            key = f"{PREFIX}/day-{quarter_day:02d}/events-{n}.json"
            s3.put_object(
                Bucket=SOURCE, Key=key, Body=os.urandom(2048 + n), ContentType="application/json"
            )
            count += 1
    extras = {
        f"{PREFIX}/reports/Q1 summary (final).pdf": os.urandom(40_000),
        f"{PREFIX}/reports/résumé-ünïcode.txt": "données".encode(),
        f"{PREFIX}/empty-marker": b"",
        f"{PREFIX}/archive/large.bin": os.urandom(12 * 1024 * 1024),
    }
    for key, body in extras.items():
        s3.put_object(Bucket=SOURCE, Key=key, Body=body)
        count += 1
    s3.put_object(Bucket=SOURCE, Key="Projects/TeamA/2024Q10/not-in-this-job.txt", Body=b"x")
    return count


def digests(s3: Any, bucket: str) -> dict[str, str]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX + "/"):
        for obj in page.get("Contents", ()):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"]] = hashlib.md5(body, usedforsecurity=False).hexdigest()
    return out


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def done_so_far(path: Path) -> int:
    """Files done per the checkpoint: the JSON file plus the journal the run appends to."""
    try:
        return read_checkpoint(path).processed_files
    except AsyncBackupError:  # not written yet
        return 0


def show_checkpoint(path: Path) -> None:
    state = orjson.loads(path.read_bytes())
    files = state.pop("files")
    state.pop("errors")
    print(f"$ jq . {_shown(path)}   (abridged)")
    print(orjson.dumps(state, option=orjson.OPT_INDENT_2).decode())
    done = sum(1 for v in files.values() if v)
    print(f'"files": {len(files)} entries, {done} true, {len(files) - done} false; for example:')
    for key, value in list(files.items())[:3] + list(files.items())[-2:]:
        print(f'  "{key}": {str(value).lower()}')


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    env = write_profiles()
    say("starting a local S3 server")
    server, endpoint = start_server()
    try:
        print(f"S3 endpoint: {endpoint}")
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="demo",
            aws_secret_access_key="demo",
            region_name="us-east-1",
        )
        say(f"filling s3://{SOURCE}/{PREFIX}/ with sample data")
        print(f"{fill(s3)} objects, including a 12 MiB one (multipart) and unicode keys")
        scratch = WORK / "scratch"
        command = [
            str(BIN / "backup-s3"),
            PREFIX,
            "--dest-profile", "prod",
            "--source-bucket", SOURCE,
            "--dest-bucket", DEST,
            "--cleanup",
            "--base-local-path", str(scratch),
            "--endpoint-url", endpoint,
            "--concurrency", "2",
            "--checkpoint-interval", "10",
        ]  # fmt: skip
        checkpoint = scratch / "checkpoints" / "company-data-db_Projects_TeamA_2024Q1.checkpoint"
        say("running the backup, and pressing Ctrl-C part-way")
        print("$ " + " ".join(c if c else "''" for c in command[:1]) + " " + " ".join(command[1:]))
        run = subprocess.Popen(command, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and run.poll() is None:
            if done_so_far(checkpoint) >= 100:
                run.send_signal(signal.SIGINT)
                break
            time.sleep(0.01)
        code = run.wait()
        print(f"exit code: {code} (130 = interrupted, checkpoint saved)")
        if code != 130:
            print("the backup was not interrupted as planned", file=sys.stderr)
            return 1
        say("the checkpoint it left")
        show_checkpoint(checkpoint)
        say("running the same command again: it resumes")
        code = subprocess.run(command, env=env, check=False).returncode
        print(f"exit code: {code}")
        if code != 0:
            return code
        say("checking the destination against the source")
        source, dest = digests(s3, SOURCE), digests(s3, DEST)
        if source != dest:
            print(f"MISMATCH: {len(source)} source objects, {len(dest)} copied", file=sys.stderr)
            return 1
        print(f"all {len(dest)} objects identical (MD5 of every body compared)")
        archived = sorted((scratch / "checkpoints" / "archive").iterdir())
        print(f"completed checkpoint archived as {_shown(archived[-1])}")
        print((scratch / "checkpoints" / "completions.log").read_text().strip())
        say("the same check, as an operator makes it: asyncbackup checkpoint verify")
        verify = [str(BIN / "asyncbackup"), "checkpoint", "verify", str(_shown(archived[-1]))]
        print("$ " + " ".join(verify))
        code = subprocess.run([*verify, "--dest-profile", "prod"], env=env, check=False).returncode
        print(f"exit code: {code}")
        return code
    finally:
        say("stopping the S3 server")
        assert server.stdin is not None and server.stdout is not None
        server.stdin.close()
        server.wait(timeout=10)
        server.stdout.close()


if __name__ == "__main__":
    sys.exit(main())

"""Temporary credentials that change during a run, from a real ``credential_process``.

``install()`` writes a small credential process and profiles that use it into the test's AWS
config: each call of the process issues a new access key id and session token for its
profile, valid for ``lifetime`` seconds by the test's declaration (the ``Expiration`` it
prints is that plus 900 s: botocore refreshes credentials that have less than 15 min left, so
it asks for new ones once ``lifetime`` has passed), and appends what it issued to a ledger.

``CheckingProxy`` is ``S3Proxy`` with the check S3 makes and moto does not: a request signed
with a key the ledger does not know, or issued for another profile than the proxy's, is
answered 403 InvalidAccessKeyId; one with a key past its declared life (plus ``grace``, for
requests on their way), or another session token than the key's, 400 ExpiredToken /
InvalidToken, the way S3 answers.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.proxy import S3Proxy, error_body

_SCRIPT = r"""
import fcntl, json, os, sys, time
ledger, profile, lifetime, window = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
control = ledger + "." + profile + ".control"
mode = open(control).read().strip() if os.path.exists(control) else ""
if mode == "fail":
    sys.stderr.write("sts: refused for secret-in-stderr-Zq8vN3 (AKIAFAILPROCESS0TEST)\n")
    sys.exit(3)
if mode == "garbage":  # a message instead of the JSON document
    print("Enter MFA code for arn:aws:iam::123456789012:mfa/backup (secret-in-stdout-Wq7):")
    sys.exit(0)
if mode == "hang":
    with open(ledger + "." + profile + ".hung", "a") as f:
        f.write("%d\n" % os.getpid())
    time.sleep(600)
with open(ledger, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    n = sum(1 for _ in f) + 1
    now = time.time()
    key = ("ASIA" + profile.upper() + "X" * 16)[:12] + "%08d" % n
    entry = {"key": key, "secret": "secret-%s-%d-abcdefghijklmnopqrstuvwxyz" % (profile, n),
             "token": "token-%s-%d-" % (profile, n) + "T" * 40, "profile": profile,
             "issued": now, "expires": now + lifetime}
    f.write(json.dumps(entry) + "\n")
if mode == "stale":  # credentials that expired already (a helper's broken cache)
    expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60))
else:
    expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + lifetime + window))
print(json.dumps({"Version": 1, "AccessKeyId": entry["key"], "SecretAccessKey": entry["secret"],
                  "SessionToken": entry["token"], "Expiration": expiration}))
"""


def install(aws_env: Path, profiles: dict[str, float], window: float = 900) -> Path:
    """Profiles ``NAME`` (name -> lifetime in seconds) whose credentials come from the
    credential process; returns the ledger's path."""
    script = aws_env / "credproc.py"
    script.write_text(_SCRIPT)
    ledger = aws_env / "ledger.jsonl"
    config = aws_env / "config"
    text = config.read_text()
    for name, lifetime in profiles.items():
        text += (
            f"\n[profile {name}]\nregion = us-east-1\ncredential_process = "
            f"{sys.executable} {script} {ledger} {name} {lifetime} {window}\n"
        )
    config.write_text(text)
    return ledger


def control(ledger: Path, profile: str, mode: str) -> None:
    """Make the process of ``profile`` fail ("fail"), hang ("hang"), print something else than
    JSON ("garbage"), give credentials that expired a minute ago ("stale") or work ("")."""
    Path(f"{ledger}.{profile}.control").write_text(mode)


def kill_hung(ledger: Path, profile: str) -> int:
    """Kill the processes of ``profile`` that hang (by their pids); how many were alive."""
    hung = Path(f"{ledger}.{profile}.hung")
    alive = 0
    for pid in hung.read_text().split() if hung.exists() else ():
        try:
            os.kill(int(pid), signal.SIGKILL)
            alive += 1
        except ProcessLookupError:
            pass
    return alive


def issued(ledger: Path) -> list[dict[str, object]]:
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines() if line]


def calls(ledger: Path, profile: str) -> int:
    return sum(1 for entry in issued(ledger) if entry["profile"] == profile)


@dataclass
class CheckingProxy(S3Proxy):
    ledger: Path = Path()
    account: str = ""  # the profile whose keys this side accepts
    grace: float = 2.0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (code, key)

    def _verdict(self, request: web.Request) -> tuple[int, str, str] | None:
        authorization = request.headers.get("Authorization", "")
        start = authorization.find("Credential=")
        key = authorization[start + 11 :].split("/", 1)[0] if start >= 0 else ""
        if not key:
            key = request.query.get("X-Amz-Credential", "").split("/", 1)[0]
        known = {str(e["key"]): e for e in issued(self.ledger)}
        entry = known.get(key)
        if entry is None or entry["profile"] != self.account:
            message = "The AWS Access Key Id you provided does not exist in our records."
            return 403, "InvalidAccessKeyId", message
        if request.headers.get("x-amz-security-token") != entry["token"]:
            return 400, "InvalidToken", "The provided token is malformed or otherwise invalid."
        if time.time() > float(entry["expires"]) + self.grace:  # type: ignore[arg-type]
            return 400, "ExpiredToken", "The provided token has expired."
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        verdict = self._verdict(request)
        if verdict is None:
            return await super()._handle(request)
        status, code, message = verdict
        authorization = request.headers.get("Authorization", "")
        self.refused.append((code, authorization[:80]))
        await request.read()
        return web.Response(
            status=status,
            body=error_body(code, message, request.path),
            headers={"Content-Type": "application/xml"},
        )

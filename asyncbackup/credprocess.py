"""A bound on how long a profile's ``credential_process`` may take to answer.

botocore (and aiobotocore) run the process with no timeout. One that hangs mid-run (waiting
for an MFA prompt or a vault's unlock that nobody answers, a helper stuck on the network)
held every request that needed fresh credentials, and the run stalled for good, saying
nothing. Each of our clients' sessions has its credential processes run through
``BoundedPopen`` (botocore's, in a thread) or ``bounded_exec`` (aiobotocore's, on the loop):
after ``NOTICE_AFTER`` seconds a warning says the run is waiting; after ``PROCESS_TIMEOUT``
the process is killed and ``CredentialProcessTimeout`` raised, which stops the run as
credentials that cannot be refreshed do (``retry.classify``). Output that is not JSON is such
a failure too.

A role with an MFA device (``mfa_serial``) has botocore ask for a code with ``getpass``, which
falls back to standard input when there is no terminal: a run from cron failed "unexpected
EOFError", and one whose standard input was a pipe nobody writes to waited for good.
``ask_mfa_code`` asks on the terminal as before; with none, it takes a line from standard input
(``echo CODE | backup-s3 ...``) within ``MFA_STDIN_WAIT`` seconds, else raises
``MfaCodeUnavailable``: one line at the start, exit 2. A role's credentials are shared by every
client of the process (``ROLE_CACHE``): each client, the fast path's and botocore's, the
source's and the destination's, assumed the role on its own, and asked for a code each time;
and a client whose role asks for one (``asks_for_mfa``) assumes it when it is made, before the
run's first requests, which the source and the destination send at once (each asked).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from botocore.credentials import AssumeRoleProvider, ProcessProvider, SSOProvider
from botocore.exceptions import CredentialRetrievalError, SSOError, TokenRetrievalError

log = logging.getLogger("asyncbackup")

#: seconds a credential process may take before it is killed (an interactive one, asking for
#: an MFA code at the start of a run, has this long to be answered)
PROCESS_TIMEOUT = 300.0
#: seconds after which a warning says the run is waiting for it
NOTICE_AFTER = 30.0
#: seconds a run with no terminal waits for an MFA code on its standard input
MFA_STDIN_WAIT = 10.0
#: the credentials of the roles assumed by this process's clients, by botocore's key of the
#: AssumeRole call (role, session name, external id, MFA device, duration), as the AWS CLI
#: keeps them in ``~/.aws/cli/cache``; botocore asks STS again when they near their expiry
ROLE_CACHE: dict[str, Any] = {}


class CredentialProcessTimeout(CredentialRetrievalError):  # type: ignore[misc]
    fmt = (
        "the profile's credential_process gave no credentials in {seconds:.0f} s and was "
        "stopped; run the command by hand to see why"
    )


class MfaCodeUnavailable(CredentialRetrievalError):  # type: ignore[misc]
    fmt = (
        "the profile's role needs an MFA code (mfa_serial), and there is no terminal to ask "
        "for it on, nor a code on its standard input within {seconds:.0f} s; run the command "
        "from a terminal, give the code on its standard input, or use a profile without "
        "mfa_serial"
    )


def ask_mfa_code(prompt: str) -> str:
    """The MFA code botocore asks for (its ``mfa_prompter``): on the terminal, as botocore
    asks; with none, the first line of standard input, if one comes in ``MFA_STDIN_WAIT``
    seconds."""
    try:
        with open("/dev/tty", "rb"):
            pass
    except OSError:
        code = _line_from_stdin(MFA_STDIN_WAIT)
        if code:
            return code
        raise MfaCodeUnavailable(provider="assume-role", seconds=MFA_STDIN_WAIT) from None
    return getpass.getpass(prompt)


def asks_for_mfa(session: Any) -> bool:
    """Whether the credentials of ``session`` (a botocore session) come from a role assumed
    with an MFA code: its profile's, or that of a profile the role's credentials come from."""
    profiles = session.full_config.get("profiles", {})
    name = session.profile or "default"
    seen = set()
    while name in profiles and name not in seen:
        seen.add(name)
        profile = profiles[name]
        if "role_arn" not in profile:
            return False
        if profile.get("mfa_serial"):
            return True
        name = profile.get("source_profile")
    return False


def _line_from_stdin(wait: float) -> str:
    """The first line of standard input, read a byte at a time (what follows it is left for
    another code), or "" at its end or after ``wait`` seconds without one."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # none, or not a file
        return ""
    deadline = time.monotonic() + wait
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return ""
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line.decode(errors="replace").strip()


def _waiting() -> None:
    log.warning(
        "waiting for the profile's credential_process: no answer for %.0f s (it is stopped "
        "after %.0f s)",
        NOTICE_AFTER,
        PROCESS_TIMEOUT,
    )


def _checked(answer: Any, returncode: int | None) -> Any:
    """``(stdout, stderr)`` as the process gave them, when it succeeded and printed JSON.
    botocore parses what it printed without catching the error, so that a process printing
    something else (a prompt, a message) was an unexpected ``JSONDecodeError``, not a failure
    of the credentials."""
    if returncode == 0:
        try:
            json.loads(answer[0])
        except ValueError:
            raise CredentialRetrievalError(
                provider=ProcessProvider.METHOD, error_msg="its output is not JSON"
            ) from None
    return answer


def _timed_out() -> CredentialProcessTimeout:
    return CredentialProcessTimeout(provider=ProcessProvider.METHOD, seconds=PROCESS_TIMEOUT)


class BoundedPopen(subprocess.Popen):  # type: ignore[type-arg]
    """``subprocess.Popen`` whose ``communicate()`` (the only call botocore makes) gives up
    after ``PROCESS_TIMEOUT`` seconds, the process killed."""

    def communicate(self, input: Any = None, timeout: float | None = None) -> Any:
        notice = min(NOTICE_AFTER, PROCESS_TIMEOUT)
        try:
            return _checked(super().communicate(input, timeout=notice), self.returncode)
        except subprocess.TimeoutExpired:
            if notice >= PROCESS_TIMEOUT:
                return self._stop()
            _waiting()
        try:
            answer = super().communicate(timeout=PROCESS_TIMEOUT - notice)
        except subprocess.TimeoutExpired:
            return self._stop()
        return _checked(answer, self.returncode)

    def _stop(self) -> Any:
        self.kill()
        super().communicate()
        raise _timed_out() from None


class _BoundedProcess:
    """An ``asyncio.subprocess.Process`` whose ``communicate()`` is bounded the same way."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def communicate(self, input: bytes | None = None) -> tuple[bytes, bytes]:
        notice = asyncio.get_running_loop().call_later(min(NOTICE_AFTER, PROCESS_TIMEOUT), _waiting)
        answered = False
        try:
            out = await asyncio.wait_for(self._process.communicate(input), PROCESS_TIMEOUT)
            answered = True
            return _checked(out, self._process.returncode)  # type: ignore[no-any-return]
        except TimeoutError:
            raise _timed_out() from None
        finally:
            notice.cancel()
            if not answered and self._process.returncode is None:  # timed out or cancelled
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                await asyncio.shield(self._process.wait())


async def bounded_exec(*args: Any, **kwargs: Any) -> _BoundedProcess:
    """``asyncio.create_subprocess_exec``, its ``communicate()`` bounded."""
    return _BoundedProcess(await asyncio.create_subprocess_exec(*args, **kwargs))


def bound_credential_processes(session: Any, *, aio: bool = False) -> None:
    """Run the credential processes of ``session`` (a botocore session, or aiobotocore's with
    ``aio``) bounded: the profile's own, and those of the profiles an assumed role takes its
    source credentials from; ask for its roles' MFA codes with ``ask_mfa_code``, and keep their
    credentials in ``ROLE_CACHE``; have the failures of its SSO and credential_process
    profiles name the profile (``failed_profile``). Resolves nothing: the providers are made,
    not asked."""
    popen: Callable[..., Any] = bounded_exec if aio else BoundedPopen
    resolver = session.get_component("credential_provider")
    for provider in list(getattr(resolver, "providers", ())):
        if isinstance(provider, ProcessProvider):
            provider._popen = popen
        if isinstance(provider, AssumeRoleProvider):
            provider._prompter = ask_mfa_code
            provider.cache = ROLE_CACHE
        if isinstance(provider, (SSOProvider, ProcessProvider)):
            _name_failures(provider, aio=aio)
        builder: Any = getattr(provider, "_profile_provider_builder", None)
        make = getattr(builder, "_create_process_provider", None)
        if make is not None:
            builder._create_process_provider = _bounded_maker(make, popen, aio=aio)
        make_sso = getattr(builder, "_create_sso_provider", None)
        if make_sso is not None:
            builder._create_sso_provider = _named_maker(make_sso, aio=aio)


def _bounded_maker(
    make: Callable[[str], Any], popen: Callable[..., Any], *, aio: bool
) -> Callable[[str], Any]:
    def create(profile_name: str) -> Any:
        provider = make(profile_name)
        provider._popen = popen
        _name_failures(provider, aio=aio)
        return provider

    return create


def _named_maker(make: Callable[[str], Any], *, aio: bool) -> Callable[[str], Any]:
    def create(profile_name: str) -> Any:
        provider = make(profile_name)
        _name_failures(provider, aio=aio)
        return provider

    return create


def failed_profile(exc: BaseException) -> str | None:
    """The profile whose credentials ``exc`` (an SSO or credential_process failure) failed
    to give: a refresh mid-run fails far from the client that knows its profile, and what
    to do (``aws sso login --profile``, run the profile's command) needs the name."""
    name = getattr(exc, "failed_profile", None)
    return name if isinstance(name, str) else None


def _name_failures(provider: Any, *, aio: bool) -> None:
    """Have the credentials ``provider`` (an SSO or credential_process profile's) loads raise
    their failures (a session over, a token missing, the process failing) with the profile's
    name on them (``failed_profile``): those of the first fetch, and of every refresh after
    it."""
    load, name = provider.load, provider._profile_name

    def named(exc: BaseException) -> None:
        failures = (SSOError, TokenRetrievalError, CredentialRetrievalError)
        if isinstance(exc, failures) and failed_profile(exc) is None:
            exc.failed_profile = name

    def refreshing(credentials: Any) -> Any:
        refresh = getattr(credentials, "_refresh_using", None)
        if refresh is None:  # none, or keys that never change
            return credentials
        if aio:

            async def refresh_async() -> Any:
                try:
                    return await refresh()
                except Exception as exc:
                    named(exc)
                    raise

            credentials._refresh_using = refresh_async
        else:

            def refresh_sync() -> Any:
                try:
                    return refresh()
                except Exception as exc:
                    named(exc)
                    raise

            credentials._refresh_using = refresh_sync
        return credentials

    if aio:

        async def load_async() -> Any:
            try:
                return refreshing(await load())
            except Exception as exc:
                named(exc)
                raise

        provider.load = load_async
    else:

        def load_sync() -> Any:
            try:
                return refreshing(load())
            except Exception as exc:
                named(exc)
                raise

        provider.load = load_sync

"""git as a subprocess: mirror clone, bundle, verify, ls-remote; the token through a
credential helper that answers GitHub's git host only.

A transfer that stalls (below 1,000 bytes/s for ``stall_seconds``, the run's read timeout) is
abandoned by git itself (``http.lowSpeedLimit``/``http.lowSpeedTime``) and retried like any
dropped connection: a clone never hangs for ever on a dead link.

Where ``setpriv`` can (Linux, util-linux 2.33 on), git runs under ``setpriv --pdeathsig KILL``:
the kernel kills it when the process of the run dies, even by SIGKILL, so no git outlives a
killed run and goes on writing into the mirror the next run fetches into. Under a file size
limit (``ulimit -f``) git runs with SIGXFSZ ignored, so it says "File too large" rather than
dying unheard (``file_size_limit_prefix``); git's words for a full local disk stop the run
(``local_disk_full``).

The token is never in a URL, an argument or a file. git asks for credentials through a
credential helper given on its command line (``-c credential.helper=!...``, after ``-c
credential.helper=`` has switched off the user's own, so no helper stores the token): a shell
function, holding no secret, that prints the token from an environment variable of the git
process, and only when git asks for GitHub's git origin (``git_origin``: the scheme and host
of the API, ``api.`` dropped): a clone URL or redirect elsewhere gets no token. Being a shell
snippet, not a script file, it works where the temporary directory is mounted ``noexec``.
git never prompts, and reads neither the system's nor the user's git configuration
(``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL``) nor ``~/.netrc`` (``HOME``): a proxy or a
CA bundle comes from the environment (``HTTPS_PROXY``, ``GIT_SSL_CAINFO``), which git and
curl read. The caller's ``GIT_*`` variables that would point git at another repository or
shape a new one are dropped; git looks for no repository above the staging root, runs no
hook and speaks http and https alone, whatever a kept mirror's configuration says.

Refs GitHub adds for pull requests (``refs/pull/*``) are read-only on GitHub and are left out of
bundles, so a bundle restores with ``git clone --mirror`` and pushes back with ``git push
--mirror``; with git 2.29 on they are left out of the mirrors too (a negative refspec), so
their commits are not downloaded at all. Pull request data lives in the ``pulls.json``
metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from ..errors import ObjectError
from ..filemodes import make_folders

GIT = shutil.which("git") or "/usr/bin/git"
TOKEN_VARIABLE = "ASYNCBACKUP_GIT_TOKEN"  # noqa: S105 - a variable's name
USER_VARIABLE = "ASYNCBACKUP_GIT_USER"
#: Ref patterns left out of bundles: GitHub's hidden pull request refs.
EXCLUDED_REFS = ("refs/pull/*",)
#: The same refs kept out of mirrors (a negative refspec: git 2.29 on), so that a clone does
#: not download every pull request's commits only for the bundle to leave them out.
NO_PULL_REFS = "^refs/pull/*"

ORIGIN_VARIABLE = "ASYNCBACKUP_GIT_ORIGIN"
#: git runs it as ``sh -c 'f() {...}; f get'`` with the request (``protocol=``, ``host=``...)
#: on stdin; it answers ``get`` for the one origin only, and ignores ``store`` and ``erase``.
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || return 0; p=; h=; '
    'while IFS= read -r line; do case "$line" in '
    "protocol=*) p=${line#protocol=} ;; host=*) h=${line#host=} ;; esac; done; "
    f'test "$p://$h" = "${ORIGIN_VARIABLE}" || return 0; '
    "printf 'username=%s\\npassword=%s\\n' "
    f'"${{{USER_VARIABLE}:-x-access-token}}" "${TOKEN_VARIABLE}"; '
    "}; f"
)
#: Variables of the caller's environment that would point git elsewhere or log credentials:
#: those git itself drops on entering another repository (``git rev-parse --local-env-vars``:
#: ``GIT_CONFIG`` is the file ``git config`` reads and writes) and more.
_DROPPED_VARIABLES = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_IMPLICIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_NAMESPACE",
        "GIT_COMMON_DIR",
        "GIT_CONFIG",
        "GIT_GRAFT_FILE",
        "GIT_NO_REPLACE_OBJECTS",
        "GIT_REPLACE_REF_BASE",
        "GIT_PREFIX",
        "GIT_INTERNAL_SUPER_PREFIX",
        "GIT_SHALLOW_FILE",
        # what a new mirror is made with (``init --bare``): the hash (sha256 does not fetch
        # GitHub's sha1 repositories) and a template whose ``config`` would be the mirror's
        "GIT_DEFAULT_HASH",
        "GIT_TEMPLATE_DIR",
        # they win over ``-c http.lowSpeed...``: a stalled transfer would outlast the run's
        # read timeout (600 s, as CI images set them for slow links; for ever with 0)
        "GIT_HTTP_LOW_SPEED_LIMIT",
        "GIT_HTTP_LOW_SPEED_TIME",
        "GIT_CURL_VERBOSE",
        "GIT_CONFIG_COUNT",
        "GIT_CONFIG_PARAMETERS",
        "SSH_ASKPASS",
        "GIT_ASKPASS",
    }
)
_NOT_FOUND = ("repository not found", "not found", "does not appear to be a git repository")
_TRANSIENT = (
    "rpc failed",
    "early eof",
    "the remote end hung up",
    "could not resolve host",
    "failed to connect",
    "connection reset",
    "connection timed out",
    "operation timed out",
    "returned error: 5",
    "returned error: 429",  # rate limited: the artifact is tried again after a pause
    "http/2 stream",
    "unexpected disconnect",
    "transfer closed",
    "too slow",  # stalled: below http.lowSpeedLimit for http.lowSpeedTime
    # the TLS layer's words for a dropped connection (git with GnuTLS, as Debian's; OpenSSL)
    "gnutls recv error",
    "gnutls_handshake() failed",
    "tls connection was non-properly terminated",
    "ssl_error_syscall",
    "empty reply from server",
)
#: git's words (``LC_ALL=C``) for a local disk that takes no more: the staging disk is full,
#: which stops the run as it does an S3 backup's (``staging.raise_if_disk_full``)
_DISK_FULL = {
    "no space left on device": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "file too large": errno.EFBIG,
}
#: The names git quotes in its messages (URLs, paths) and bare URLs. A name holds any digits
#: or words (port 34512, a repository ``r451``, a directory ``pytest-451``), so the markers
#: above and the status codes are looked for in the rest of the message only.
_NAMES = re.compile(r"'(?:[a-z][a-z0-9+.-]*://|\.{0,2}/)[^']*'|\b[a-z][a-z0-9+.-]*://\S+")


def classify_failure(message: str) -> tuple[str, bool]:
    """``(code, retryable)`` of a git failure from its stderr: ``GitNotFound``,
    ``UnavailableForLegalReasons`` or ``GitFailed``, retryable when transient."""
    text = _NAMES.sub("''", " ".join(message.lower().split()))
    if any(marker in text for marker in _NOT_FOUND) or "error: 404" in text:
        return "GitNotFound", False
    if "error: 451" in text:
        return "UnavailableForLegalReasons", False
    return "GitFailed", any(marker in text for marker in _TRANSIENT)


def local_disk_full(message: str) -> int | None:
    """The ``errno`` of a full local disk that git's stderr reports, or None. The server's
    own lines (``remote: ...``: its disk, not ours) and the names git quotes are left out."""
    for line in message.lower().splitlines():
        if line.lstrip().startswith("remote:"):
            continue
        text = _NAMES.sub("''", line)
        for words, number in _DISK_FULL.items():
            if words in text:
                return number
    return None


def git_origin(api_url: str) -> str:
    """Where GitHub serves git for the API at ``api_url``, as git names it to a credential
    helper (``protocol://host[:port]``): ``https://github.com`` for ``https://api.github.com``
    (and ``SUB.ghe.com`` for ``api.SUB.ghe.com``); the API's own host for GitHub Enterprise
    Server, whose API is a path (``https://HOST/api/v3``)."""
    parts = urllib.parse.urlsplit(api_url)
    scheme = parts.scheme.lower()
    host = parts.netloc.rpartition("@")[2].lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and host.endswith(default):  # git names no port for a URL that writes none
        host = host.removesuffix(default)
    if parts.path.strip("/") == "":
        host = host.removeprefix("api.")
    return f"{scheme}://{host}"


@functools.cache
def parent_death_prefix() -> tuple[str, ...]:
    """The command that makes the kernel kill git when this process dies, if it works here
    (tried once per process); ``()`` where it does not: git then runs as it is."""
    setpriv = shutil.which("setpriv")
    true = shutil.which("true")
    if setpriv is None or true is None:
        return ()
    prefix = (setpriv, "--pdeathsig", "KILL", "--")
    try:
        probe = subprocess.run([*prefix, true], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):  # an old setpriv, a sandbox without prctl
        return ()
    return prefix if probe.returncode == 0 else ()


@functools.cache
def negative_refspecs(git: str = GIT) -> bool:
    """Whether this git takes negative refspecs (``^refs/pull/*``): 2.29 on (tried once)."""
    try:
        done = subprocess.run([git, "version"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    found = re.search(rb"(\d+)\.(\d+)", done.stdout)
    return found is not None and (int(found[1]), int(found[2])) >= (2, 29)


def file_size_limit_prefix() -> tuple[str, ...]:
    """Under a file size limit (``ulimit -f``), a command that runs git with SIGXFSZ ignored:
    past the limit it then gets EFBIG and says "File too large" (``local_disk_full``), where
    the signal's default would kill it with nothing said ("invalid index-pack output").
    Python ignores SIGXFSZ, but its child processes get the default back (uvloop's, every
    signal's), so a shell sets it, then runs git in its place. ``()`` without a limit."""
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY:
        return ()
    return ("/bin/sh", "-c", 'trap "" XFSZ; exec "$@"', "git")


class GitError(ObjectError):
    """A git command failed; ``code`` is ``GitNotFound``, ``UnavailableForLegalReasons``,
    ``GitEmpty`` or ``GitFailed``."""


class GitRunner:
    """Runs git for one backup run, at most ``slots`` processes at a time."""

    def __init__(
        self,
        token: str,
        *,
        slots: asyncio.Semaphore,
        origin: str,
        stall_seconds: int = 120,
        git: str = GIT,
        workdir: Path | None = None,
    ) -> None:
        self.git = git
        # the staging root: git looks for no repository above it (``_env``)
        self.workdir = Path(os.path.abspath(workdir)) if workdir is not None else None
        self.slots = slots
        self.origin = origin  # the only origin the token is given to (``git_origin``)
        self.stall_seconds = max(1, stall_seconds)
        self._token = token
        self._prefix: tuple[str, ...] = ()
        self._negative_refspecs = False  # whether this git takes ``^refs/pull/*`` (__enter__)
        self.commands: list[str] = []  # the subcommands run, for reports and tests

    def __enter__(self) -> GitRunner:
        self._prefix = (*file_size_limit_prefix(), *parent_death_prefix())
        self._negative_refspecs = negative_refspecs(self.git)
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _DROPPED_VARIABLES and not k.startswith("GIT_TRACE")
        }
        env.update(
            {
                "GIT_TERMINAL_PROMPT": "0",
                # neither the machine's nor the user's git configuration: their
                # ``url.*.insteadOf`` (to SSH, another host), ``http.extraHeader``,
                # ``core.hooksPath``... would change where git goes and what it sends or runs
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull,  # ~/.gitconfig and ~/.config/git/config
                # nor the user's ~/.netrc, whose credentials curl would send before git asks
                # for the token (GitHub answers other credentials 404 for a private
                # repository); nor ~/.gitconfig for a git older than 2.32
                "HOME": os.devnull,
                "XDG_CONFIG_HOME": os.devnull,
                "LC_ALL": "C",
                ORIGIN_VARIABLE: self.origin,
                TOKEN_VARIABLE: self._token,
            }
        )
        if self.workdir is not None:
            # a mirror git does not take for a repository (its HEAD emptied by a power cut)
            # must not send git up to a checkout around the staging folder: its origin
            # would be set, fetched into and bundled in the mirror's place
            env["GIT_CEILING_DIRECTORIES"] = str(self.workdir.parent)
        return env

    def _scrub(self, text: str) -> str:
        text = " ".join(text.split())
        if self._token:
            text = text.replace(self._token, "***")
        return text[-400:]

    async def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        label: str | None = None,
        local: bool = False,
    ) -> str:
        """Run ``git ARGS``; its stdout, or a ``GitError`` with the last of its stderr - an
        ``OSError`` (``ENOSPC``...) when git says the local disk is full.
        ``label``: what ``commands`` records (default: the subcommand). git may use http
        and https only (``GIT_ALLOW_PROTOCOL``, whatever a kept mirror's configuration
        allows: its ``ext::`` or ``ssh`` would run a command with the token in its
        environment); ``local``: a local file (a bundle) only."""
        argv = [*self._prefix, self.git, "-c", "credential.helper=", "-c", "core.askPass="]
        argv += ["-c", f"credential.helper={_CREDENTIAL_HELPER}"]
        argv += ["-c", "http.lowSpeedLimit=1000", "-c", f"http.lowSpeedTime={self.stall_seconds}"]
        # no hook runs (a fetch runs reference-transaction): not one put in a kept mirror,
        # which would get the token in its environment
        argv += ["-c", f"core.hooksPath={os.devnull}"]
        # the gc a fetch starts in a mirror full of loose objects runs within it: detached (a
        # session of its own) it could repack the mirror while its bundle is made, and
        # outlive a killed run; ``maintenance.autoDetach``: git 2.47 on
        argv += ["-c", "gc.autoDetach=false", "-c", "maintenance.autoDetach=false"]
        argv += args
        first = 0
        while first < len(args) and args[first] == "-c":  # configuration for this command only
            first += 2
        command = args[first] if first < len(args) else args[0]
        env = self._env()
        env["GIT_ALLOW_PROTOCOL"] = "file" if local else "http:https"
        async with self.slots:
            self.commands.append(label or command)
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # so a cancellation can stop git's helpers too
            )
            try:
                out, err = await process.communicate()
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(BaseException):
                    await asyncio.shield(process.wait())
                raise
        if process.returncode != 0:
            stderr = err.decode("utf-8", "replace")
            message = self._scrub(stderr) or f"exit {process.returncode}"
            code, retryable = classify_failure(stderr)  # all of it: the message is cut short
            failure = GitError(code, f"git {command}: {message}", retryable=retryable)
            number = local_disk_full(stderr)
            if number is not None:  # not the repository's fault: the caller stops the run
                raise OSError(number, os.strerror(number), str(cwd or args[-1])) from failure
            raise failure
        return out.decode("utf-8", "replace")

    async def ls_remote(self, url: str) -> list[tuple[str, str]] | None:
        """``(sha, ref)`` of every ref but the excluded ones; None if there is no repository.
        Run in the staging root: in the current directory, git would read the configuration
        of the repository around it (a CI job's checkout: its ``url.*.insteadOf``)."""
        try:
            out = await self.run(["ls-remote", "--", url], cwd=self.workdir)
        except GitError as exc:
            if exc.code == "GitNotFound":
                return None
            raise
        refs: list[tuple[str, str]] = []
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            if ref and not ref.startswith("refs/pull/"):
                refs.append((sha, ref))
        return refs

    async def mirror(self, url: str, dest: Path) -> None:
        """A bare mirror of ``url`` at ``dest``: updated in place when one is already there."""
        if await asyncio.to_thread(_is_bare_repository, dest):
            try:
                await self.run(["remote", "set-url", "origin", url], cwd=dest)
                await self._leave_out_pull_refs(dest)
                await self.run(["fetch", "--prune", "--quiet", "origin"], cwd=dest)
                await self._follow_remote_head(dest)
                return
            except GitError as exc:
                if exc.code == "GitNotFound" or exc.retryable:
                    raise  # a network failure is tried again into this mirror
                # a damaged mirror from a crashed run: start again from scratch
        await asyncio.to_thread(_clear, dest)
        partial = dest.with_name(dest.name + ".partial")
        await asyncio.to_thread(_clear, partial)
        try:
            if self._negative_refspecs:
                # clone --mirror fetches every ref whatever the configuration says: a bare
                # repository that mirrors origin but its pull request refs, then one fetch
                await self.run(["init", "--bare", "--quiet", str(partial)])
                add = ["remote", "add", "--mirror=fetch", "--", "origin", url]
                await self.run(add, cwd=partial)
                await self._leave_out_pull_refs(partial)
                # the pack kept as it comes, as a clone keeps it (not exploded when small)
                fetch = ["-c", "fetch.unpackLimit=1", "fetch", "--quiet", "origin"]
                await self.run(fetch, cwd=partial, label="clone")
                await self._follow_remote_head(partial)
            else:
                await self.run(["clone", "--mirror", "--quiet", "--", url, str(partial)])
            await asyncio.to_thread(partial.rename, dest)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, partial, True)
            raise

    async def _leave_out_pull_refs(self, mirror: Path) -> None:
        """Keep GitHub's pull request refs out of what ``mirror`` fetches (a mirror made
        by an earlier version fetched them), where git can."""
        if not self._negative_refspecs:
            return
        try:
            specs = await self.run(["config", "--get-all", "remote.origin.fetch"], cwd=mirror)
        except GitError:
            specs = ""  # none set (exit 1)
        if NO_PULL_REFS not in specs.split():
            await self.run(["config", "--add", "remote.origin.fetch", NO_PULL_REFS], cwd=mirror)

    async def _follow_remote_head(self, mirror: Path) -> None:
        """Point the mirror's HEAD where the remote's points: a fetch leaves it on the branch
        it had at the clone, dangling once that branch is renamed (the default branch moved
        from master to main, say), and the bundle would restore with no default branch."""
        out = await self.run(["ls-remote", "--symref", "origin", "HEAD"], cwd=mirror)
        for line in out.splitlines():
            target, _, name = line.removeprefix("ref: ").partition("\t")
            if line.startswith("ref: ") and name == "HEAD" and target.startswith("refs/heads/"):
                await self.run(["symbolic-ref", "HEAD", target], cwd=mirror)
                return

    async def bundle(self, mirror: Path, out: Path) -> list[tuple[str, str]]:
        """Bundle every ref of ``mirror`` but the excluded ones; the refs bundled.

        Raises ``GitError("GitEmpty")`` when there is nothing to bundle.
        """
        refs = await self.refs(mirror)
        if not refs:
            raise GitError("GitEmpty", "the repository has no commits")
        excludes = [f"--exclude={pattern}" for pattern in EXCLUDED_REFS]
        await self.run(["bundle", "create", "--quiet", str(out), *excludes, "--all"], cwd=mirror)
        return refs

    async def verify(self, mirror: Path, bundle: Path, scratch: Path) -> None:
        """The bundle is whole and needs no other objects: ``git bundle verify`` (its header
        and prerequisites), then a clone from it into ``scratch`` (removed after), which
        reads and hashes every object and checks every ref's history is there.
        ``bundle verify`` alone does not read the pack, and ``bundle create`` copies the
        bytes of a damaged mirror's pack as they are: such a bundle would not restore."""
        await self.run(["bundle", "verify", "--quiet", str(bundle)], cwd=mirror)
        try:
            clone = ["clone", "--mirror", "--quiet", "--", str(bundle), str(scratch)]
            await self.run(clone, label="verify", local=True)  # not a clone from GitHub
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def uses_lfs(self, mirror: Path) -> bool:
        """Whether HEAD's tree routes any file to Git LFS (``filter=lfs`` in a
        ``.gitattributes``): a mirror clone fetches no LFS object, so the bundle holds only
        their pointers. False when it cannot tell (no HEAD, no such file)."""
        grep = ["grep", "-l", "-F", "filter=lfs", "HEAD", "--", ":(glob)**/.gitattributes"]
        try:
            return bool((await self.run(grep, cwd=mirror, label="lfs-check")).strip())
        except GitError:  # exit 1: no match; 128: no HEAD (an empty repository)
            return False

    async def refs(self, repository: Path) -> list[tuple[str, str]]:
        out = await self.run(["for-each-ref", "--format=%(objectname)\t%(refname)"], cwd=repository)
        refs: list[tuple[str, str]] = []
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            if ref and not ref.startswith("refs/pull/"):
                refs.append((sha, ref))
        return refs


def _is_bare_repository(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def _clear(path: Path) -> None:
    """Remove ``path`` if it is there, and make sure its parent exists (blocking)."""
    shutil.rmtree(path, ignore_errors=True)
    make_folders(path.parent)


def refs_digest(refs: Sequence[tuple[str, str]]) -> str:
    """A stable fingerprint of a set of refs: it changes whenever any ref moves."""
    text = "\n".join(f"{sha} {ref}" for sha, ref in sorted(refs, key=lambda r: r[1]))
    return hashlib.sha256(text.encode()).hexdigest()

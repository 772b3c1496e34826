"""One long-lived S3 client per credential set, and the checks that a bucket is usable.

A client is made in two halves (``LazyClient``). At once, a plain botocore client that never
sends anything: it resolves the credentials and prepares the fast path's probe request
(``fasts3.target``), which is all a run whose requests take the fast path needs. The
aiobotocore client, which sends every other request, is made the first time one is sent:
importing aiobotocore (and aiohttp under it) and making it is a third of a start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConfigParseError,
    InvalidConfigError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.utils import get_environ_proxies

from .botocore_setup import share_data_loader, tune_client
from .credprocess import asks_for_mfa, bound_credential_processes
from .encryption import EncryptionNotApplied, check_applied
from .errors import ConfigError, ObjectError, StoreUnavailableError
from .fasts3 import open_fast_s3
from .redact import redact
from .retry import (
    ACCESS_DENIED,
    CLOCK_SKEWED,
    CREDENTIAL_ERRORS,
    CREDENTIALS_REFUSED,
    NOT_REFRESHED,
    STILL_EXPIRED,
    RetryPolicy,
    classify,
    credentials_failure,
)

log = logging.getLogger("asyncbackup")
S3Client = Any  # aiobotocore builds the client class at run time; there is no static type
#: a Requester Pays bucket serves other accounts only the requests that carry it
REQUEST_PAYER_HEADER = "x-amz-request-payer"

#: answers to the start-up check that mean the credentials (or the policy) are refused
_REFUSED = CREDENTIALS_REFUSED | ACCESS_DENIED
#: an abort's answer when the upload is gone (an abort sent again after its answer was lost)
_UPLOAD_GONE = ("NoSuchUpload", "404")
#: what to check when the destination refuses to start an upload
_UPLOAD_ADVICE = (
    "check that the credentials of --dest-profile may write there (s3:PutObject) and what "
    "the bucket policy asks of uploads (an encryption: --sse; a storage class: "
    "--storage-class)"
)
#: how often a failing advisory refresh of temporary credentials is said (``_RefreshLog``)
REFRESH_WARNING_INTERVAL = 300.0


class _RefreshLog(logging.Filter):
    """botocore's (and aiobotocore's) warning that refreshing temporary credentials failed
    carries the provider's exception as a traceback, whose last line quotes what a failed
    credential process printed on its standard error (it may hold secrets), and comes again
    at every request while the provider fails. A failure in the mandatory period (the
    credentials about to expire) fails its request, which the run reports itself
    (``retry.classify``): its warning goes. One in the advisory period (the credentials still
    good for minutes) is said in one line without the error, once every
    ``REFRESH_WARNING_INTERVAL`` seconds at most. The warning that a refresh gave expired
    credentials goes too: the request fails with it, and the run says so."""

    def __init__(self) -> None:
        super().__init__()
        self._said_at: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None and record.exc_text is None:
            # said by the run too, as the error of the request (``retry.STILL_EXPIRED``)
            return not record.getMessage().startswith(STILL_EXPIRED)
        if "advisory" not in record.getMessage():
            return False
        now = time.monotonic()
        if self._said_at is not None and now - self._said_at < REFRESH_WARNING_INTERVAL:
            return False
        self._said_at = now
        record.msg = (
            "refreshing the temporary credentials failed; the current ones are used until "
            "they are about to expire (the provider's error is not repeated: a credential "
            "process's output may hold secrets)"
        )
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


_REFRESH_LOG = _RefreshLog()
# (an SSO session's token is refreshed, and its failure warned about, the same way)
for _name in (
    "botocore.credentials",
    "aiobotocore.credentials",
    "botocore.tokens",
    "aiobotocore.tokens",
):
    logging.getLogger(_name).addFilter(_REFRESH_LOG)


class LazyClient:
    """An S3 client: botocore's ``meta``, credentials and endpoint from a plain botocore
    client made at once; every API method (``await client.get_object(...)``) from the
    aiobotocore client, made on the first call (``make``)."""

    def __init__(
        self,
        control: Any,
        make: Callable[[], Awaitable[Any]],
        request_headers: Mapping[str, str] | None = None,
        profile: str | None = None,
    ) -> None:
        #: the botocore client: prepares requests (the fast path's probe), never sends one
        self.control = control
        #: headers every request carries, signed (``x-amz-request-payer``), the fast path's too
        self.request_headers: Mapping[str, str] = dict(request_headers or {})
        #: the profile its credentials come from (a flag's, AWS_PROFILE's, "default")
        self.profile = profile
        self._make = make
        self._client: Any = None
        self._making = asyncio.Lock()

    @property
    def meta(self) -> Any:
        return self.control.meta

    @property
    def _endpoint(self) -> Any:
        return self.control._endpoint

    def _get_credentials(self) -> Any:
        return self.control._get_credentials()

    @property
    def made(self) -> bool:
        """Whether the aiobotocore client has been made (for tests and the curious)."""
        return self._client is not None

    async def aio(self) -> Any:
        """The aiobotocore client, made now if it was not yet."""
        if self._client is None:
            async with self._making:
                if self._client is None:
                    self._client = await self._make()
        return self._client

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            client = await self.aio()
            return await getattr(client, name)(*args, **kwargs)

        call.__name__ = name
        return call


async def open_client(
    stack: contextlib.AsyncExitStack,
    *,
    role: str,
    profile: str | None,
    endpoint_url: str | None,
    region: str | None,
    max_pool_connections: int,
    connect_timeout: float,
    read_timeout: float,
    request_payer: str | None = None,
) -> S3Client:
    """An S3 client for ``role`` ("source" or "destination") living as long as ``stack``.

    Credentials and ``endpoint_url`` come from the standard chain and the profile; retries
    are ours (``retry.py``), so botocore's own are switched off. Checksums are declared by
    the sink (``--checksum``), not by botocore's newer default, which some S3-compatible
    servers reject. With ``request_payer`` ("requester") every request the client sends
    carries ``x-amz-request-payer`` (a Requester Pays bucket's reader agreeing to pay),
    signed: the fast path's too (``LazyClient.request_headers``).
    """
    config: dict[str, Any] = {
        "max_pool_connections": max_pool_connections,
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "retries": {"total_max_attempts": 1, "mode": "standard"},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }
    options: dict[str, Any] = {}
    try:
        if endpoint_url:
            options["endpoint_url"] = endpoint_url
            if _plain_http(endpoint_url):  # parses it: a malformed URL raises ValueError
                options["verify"] = False
        control, mfa = _control_client(profile, region, options, config)
    except ProfileNotFound:
        flag = profile_flag(role)
        variable = _profile_variable() if profile is None else None
        if variable is not None:  # no flag: botocore took the profile from the environment
            name, value = variable
            raise ConfigError(
                f"{name}={value!r} names a profile that is not in the AWS config or "
                f"credentials files; unset {name}, or name a profile that exists (there or "
                f"with {flag}), or check AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE"
            ) from None
        raise ConfigError(
            f"{role} profile {profile!r} is not in the AWS config or credentials files; "
            f"check {flag}, AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE"
        ) from None
    except ConfigParseError as exc:
        raise ConfigError(_unreadable_file(exc)) from None
    except (InvalidConfigError, PartialCredentialsError) as exc:  # as the files have them
        raise ConfigError(_unusable_credentials(role, profile, exc)) from None
    except CREDENTIAL_ERRORS as exc:  # a credential process, SSO or STS failing at once
        raise ConfigError(
            f"cannot get the {role} credentials: "
            f"{credentials_failure(exc, _profile_name(profile))}; check {profile_flag(role)}"
        ) from None
    except (ValueError, BotoCoreError) as exc:
        raise ConfigError(
            f"cannot create the {role} S3 client: {str(exc).rstrip('.')}; check the {role}'s "
            "endpoint URL, --region and profile"
        ) from None
    _refuse_user_info(role, client_endpoint(control))
    _refuse_garbled_credentials(role, control)
    if mfa:
        _assume_now(role, profile, control)

    async def make() -> Any:
        from .aiosession import open_aio_client  # aiobotocore, aiohttp: only now

        aio_config = {**config, "tcp_keepalive": True}
        client = await open_aio_client(
            stack, profile=profile, region=region, options=options, config=aio_config
        )
        if headers:
            client.meta.events.register("before-sign.s3", functools.partial(_add, headers))
        return client

    headers = {REQUEST_PAYER_HEADER: request_payer} if request_payer else {}
    return LazyClient(control, make, headers, _profile_name(profile))


def _add(headers: Mapping[str, str], request: Any, **_: Any) -> None:
    """botocore's ``before-sign`` handler: ``headers`` on the request, then signed with it."""
    for name, value in headers.items():
        request.headers[name] = value


def _control_client(
    profile: str | None, region: str | None, options: dict[str, Any], config: dict[str, Any]
) -> tuple[Any, bool]:
    """A plain botocore S3 client with the settings the aiobotocore one will have: the same
    profile, region, endpoint and TLS, so the same credentials and request URLs; and whether
    its credentials come from a role assumed with an MFA code."""
    session = botocore.session.Session(profile=profile)
    share_data_loader(session)
    bound_credential_processes(session)
    client = session.create_client("s3", region_name=region, config=Config(**config), **options)
    tune_client(client)
    return client, asks_for_mfa(session)


def _unreadable_file(exc: ConfigParseError) -> str:
    """What to say of an AWS config or credentials file botocore cannot parse: what is wrong
    with it when its first bytes tell (a Windows editor's byte-order mark, Windows
    PowerShell's UTF-16), which no editor shows. Not botocore's parser error, which quotes the
    line it stopped at: in a credentials file, a key."""
    path = str(exc.kwargs.get("path", ""))
    try:
        with open(path, "rb") as file:
            start = file.read(3)
    except OSError:
        start = b""
    if start.startswith((b"\xff\xfe", b"\xfe\xff")):
        wrong = "it is saved as UTF-16 (Windows PowerShell's > does that); save it as UTF-8"
    elif start == b"\xef\xbb\xbf":
        wrong = (
            'it starts with a byte-order mark (saved as "UTF-8 with BOM"); save it as UTF-8 '
            "without one"
        )
    else:
        wrong = "check its syntax ([profile NAME] sections of key = value lines)"
    return f"cannot read the AWS file {path}: {wrong}"


def _unusable_credentials(role: str, profile: str | None, exc: BotoCoreError) -> str:
    """What to say of credentials botocore cannot use as they are written: a profile's role
    with neither ``source_profile`` nor ``credential_source`` (naming the profile that lacks
    them, which may be one a ``source_profile`` names), a ``source_profile`` that does not
    exist, a cycle of them; or an access key in the environment without its secret."""
    text = " ".join(str(exc).split()).rstrip(".")
    if getattr(exc, "kwargs", {}).get("provider") == "env":
        return (
            f"cannot get the {role} credentials: {text}; set both AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY (or neither), or give {profile_flag(role)}"
        )
    name = _profile_name(profile)
    if isinstance(exc, PartialCredentialsError):
        name = _role_without_source(name)
        text = "it has a role_arn, and neither source_profile nor credential_source"
    return (
        f"cannot get the {role} credentials: profile {name!r} cannot be used ({text}); fix "
        f"it in the AWS config file, or check {profile_flag(role)}"
    )


def _role_without_source(name: str) -> str:
    """The profile of the ``source_profile`` chain from ``name`` that has a ``role_arn`` and
    nothing to assume it with: ``name`` itself, or a profile the chain names."""
    profiles = botocore.session.Session().full_config.get("profiles", {})
    seen = set()
    while name not in seen:
        seen.add(name)
        following = profiles.get(name, {}).get("source_profile")
        if following not in profiles:
            break
        name = following
    return name


def _assume_now(role: str, profile: str | None, control: Any) -> None:
    """Assume the role of a client whose credentials need an MFA code, now: the clients made
    after it take the credentials from ``ROLE_CACHE`` (the source's and the destination's
    first requests, sent at once, asked for a code each). botocore assumes such a role once,
    so any failure here is final: said as it is (STS refusing, not reached), where a request
    would ask again and be told that the role "cannot be assumed again without a new MFA
    code"."""
    try:
        control._get_credentials().get_frozen_credentials()
    except CREDENTIAL_ERRORS as exc:
        detail = credentials_failure(exc, _profile_name(profile))
    except ClientError as exc:
        detail = classify(exc).message.removeprefix("cannot refresh the credentials: ")
    except BotoCoreError as exc:
        detail = " ".join(str(exc).split())
    else:
        return
    raise ConfigError(f"cannot get the {role} credentials: {detail}; check {profile_flag(role)}")


def _refuse_user_info(role: str, endpoint: str | None) -> None:
    """An endpoint URL with credentials in it (``http://user:password@host``), however it was
    given: S3 requests are signed with the access keys, so a user and password there are never
    sent (the HTTP client under botocore refuses every request that would carry both)."""
    if endpoint is None:
        return
    try:
        parts = urlsplit(endpoint)
        user_info = parts.username is not None or parts.password is not None
    except ValueError:
        return  # botocore took it: not for us to refuse
    if user_info:
        flag = "--source-endpoint-url" if role == "source" else "--dest-endpoint-url"
        raise ConfigError(
            f"the {role} endpoint URL (for {redact(endpoint)}) has a user or password in it "
            "(user:password@), which S3 does not use; remove them from --endpoint-url, "
            f"{flag}, AWS_ENDPOINT_URL or the profile's endpoint_url (the access keys come "
            "from the profile or the AWS_* variables)"
        )


def _refuse_garbled_credentials(role: str, control: Any) -> None:
    """Keys with a control character in them: a line break an env file with Windows line
    ends leaves on each value, say. An access key or token with one cannot be sent (the HTTP
    clients refuse such a header) and a secret with one signs wrongly. Credentials that
    refresh themselves (assumed roles, SSO) are checked when they are fetched, by the server."""
    credentials = control._get_credentials()
    if credentials is None or isinstance(credentials, RefreshableCredentials):
        return
    values = (credentials.access_key, credentials.secret_key, credentials.token)
    if any(value and not value.isprintable() for value in values):
        flag = profile_flag(role)
        raise ConfigError(
            f"the {role} credentials hold a control character (a line break left by an env "
            f"file with Windows line ends, say); check the keys of {flag} or the AWS_* "
            "variables"
        )


def profile_flag(role: str) -> str:
    """The flag that gives the credentials of ``role`` (``source`` or ``destination``)."""
    return "--source-profile" if role == "source" else "--dest-profile"


def _profile_name(profile: str | None) -> str:
    """The profile botocore takes the credentials from: ``profile``, else the environment's,
    else "default"."""
    if profile is not None:
        return profile
    variable = _profile_variable()
    return variable[1] if variable is not None and variable[1] else "default"


def _profile_variable() -> tuple[str, str] | None:
    """The variable botocore takes the profile from when no flag gives one, and its value
    (set, even empty), in botocore's order."""
    for name in ("AWS_DEFAULT_PROFILE", "AWS_PROFILE"):
        if name in os.environ:
            return name, os.environ[name]
    return None


def client_endpoint(client: S3Client) -> str | None:
    """The endpoint ``client`` sends to, however it was given: a flag, ``AWS_ENDPOINT_URL``
    (``_S3``), the profile's ``endpoint_url``, or AWS's own for the region."""
    url = getattr(getattr(client, "meta", None), "endpoint_url", None)
    return url if isinstance(url, str) and url else None


async def check_bucket(
    client: S3Client,
    bucket: str,
    *,
    role: str,
    attempts: int = 4,
    fast_timeouts: tuple[float, float] | None = None,
    write_probe: str | None = None,
    settings_probe: str | None = None,
    upload_params: Mapping[str, str] | None = None,
    prefix: str = "",
    answers: list[dict[str, Any]] | None = None,
) -> None:
    """Fail fast, with one clear line, when ``bucket`` cannot be used.

    The check lists (at most) one key under ``prefix``, the job's: a policy that lets the
    credentials list that prefix only (``s3:ListBucket`` with an ``s3:prefix`` condition)
    passes it, as it passes the run's own listings.

    Transient answers (5xx, SlowDown, a reset, an endpoint that does not answer yet) are
    retried a few times first, like every other request: a blip must not fail the run.
    With ``fast_timeouts`` (connect, read) the check is that ListObjectsV2 through the fast
    path, so that it makes no aiobotocore client.
    With ``write_probe`` (a key) the check reads nothing: it starts a multipart upload of that
    key and aborts it, for credentials that may write but not list (``--dest-write-only``);
    no object is written. With ``settings_probe`` (a key) such an upload, started with
    ``upload_params`` (SSE-KMS, a storage class), follows the listing: a KMS key or a class
    the destination refuses is found before any object is downloaded for nothing. The answer
    to such an upload's start (the encryption the destination gives an upload) is added to
    ``answers``.
    """
    flag = profile_flag(role)
    params = dict(upload_params or {})
    uploading = False  # the failure is the upload's (not the listing's)

    async def probe() -> None:
        nonlocal uploading
        uploading = False
        if write_probe is not None:
            uploading = True
            answered(await start_and_abort(client, bucket, write_probe, params, attempts))
            return
        await listing()
        if settings_probe is not None:
            uploading = True
            answered(await start_and_abort(client, bucket, settings_probe, params, attempts))

    def answered(answer: dict[str, Any]) -> None:
        if answers is not None:
            answers.append(answer)

    async def listing() -> None:
        if fast_timeouts is not None:
            async with contextlib.AsyncExitStack() as stack:
                connect, read = fast_timeouts
                fast = await open_fast_s3(
                    stack, client, bucket, connections=1, connect_timeout=connect, read_timeout=read
                )
                if fast is not None:
                    await fast.list_objects_v2(Bucket=bucket, MaxKeys=1, Prefix=prefix)
                    return
        await client.list_objects_v2(Bucket=bucket, MaxKeys=1, Prefix=prefix)

    try:
        await RetryPolicy(attempts).call(probe)
    except ObjectError as exc:
        code = exc.code
        if uploading and code.startswith("KMS."):
            raise StoreUnavailableError(
                f"the {role} refused the KMS key of --sse aws:kms ({exc}); check "
                f"--sse-kms-key-id and that the credentials of {flag} may use the key "
                "(kms:GenerateDataKey), then run again"
            ) from None
        if isinstance(exc, EncryptionNotApplied):
            named = f"names {exc.applied}" if exc.applied else "names no encryption"
            raise StoreUnavailableError(
                f"the {role} does not apply --sse {exc.wanted} (its answer to an upload started "
                f"with it {named}); drop --sse, or back up to a {role} that encrypts, then run "
                "again"
            ) from None
        if uploading and code == "InvalidStorageClass":
            raise StoreUnavailableError(
                f"the {role} refused --storage-class ({exc}); give a storage class it "
                "supports, then run again"
            ) from None
        if code == CLOCK_SKEWED:  # the message says what to do
            raise StoreUnavailableError(f"the {role} refused the requests: {exc}") from None
        if code == "ParamValidationError":  # botocore's, before any request: not the network
            bucket_flag = "--source-bucket" if role == "source" else "--dest-bucket"
            raise StoreUnavailableError(
                f"{bucket_flag} {bucket!r} is not a bucket name; give the name alone, without "
                "s3:// or a folder (the folder is SOURCE_PATH, or --dest-prefix)"
            ) from None
        if code in ("404", "NoSuchBucket"):
            raise StoreUnavailableError(
                f"{role} bucket {bucket!r} does not exist; check the bucket name and endpoint"
            ) from None
        if code in _REFUSED and uploading:
            raise StoreUnavailableError(
                f"access to {role} bucket {bucket!r} was refused to start an upload ({code}); "
                f"{_UPLOAD_ADVICE}"
            ) from None
        if code in _REFUSED:
            # S3 refuses a Requester Pays bucket's requests of another account that do not
            # agree to pay (x-amz-request-payer: --request-payer) the same way
            payer = (
                " (or its Requester Pays setting: such a bucket refuses the requests of other "
                "accounts that do not agree to pay; give --request-payer requester to pay)"
                if role == "source"
                and code in ACCESS_DENIED
                and not getattr(client, "request_headers", None)
                else ""
            )
            raise StoreUnavailableError(
                f"access to {role} bucket {bucket!r} was refused ({code}); check the "
                f"credentials of {flag} and the bucket policy{payer}"
            ) from None
        if code == NOT_REFRESHED:
            cause = exc.__cause__
            detail = (
                credentials_failure(cause, getattr(client, "profile", None))
                if isinstance(cause, CREDENTIAL_ERRORS)
                else exc.message.removeprefix("cannot refresh the credentials: ")
            )
            raise StoreUnavailableError(
                f"cannot get the {role} credentials: {detail}; check {flag}"
            ) from None
        if code == "NoCredentials":
            name = getattr(client, "profile", None)
            has_none = (
                f": profile {name!r} has none (keys under [{name}] in the credentials file, "
                "not [profile ...] there; or a role_arn, credential_process or sso_session in "
                "the config file)"
                if name
                else ""
            )
            raise StoreUnavailableError(
                f"no credentials for the {role}{has_none}; check {flag} or set the AWS_* variables"
            ) from None
        if isinstance(exc.__cause__, ClientError):
            raise StoreUnavailableError(
                f"{role} bucket {bucket!r} is not usable ({exc}); check the bucket name, the "
                "endpoint URL and --region"
            ) from None
        unreached = getattr(exc.__cause__, "kwargs", {}).get("endpoint_url")
        if isinstance(unreached, str) and bucket not in unreached:
            # not a request of the bucket: the credentials' (STS assuming the profile's
            # role, SSO), made under it
            raise StoreUnavailableError(
                f"cannot reach {redact(unreached)} ({code}) to get the {role} credentials "
                f"(the STS or SSO endpoint of the profile of {flag}, not the bucket's); check "
                "the network to it, and AWS_ENDPOINT_URL_STS or the profile's "
                "sts_regional_endpoints"
            ) from None
        raise StoreUnavailableError(
            f"cannot reach the {role} endpoint ({code}); check the endpoint URL and the network"
        ) from None


def upload_id_of(answer: Mapping[str, Any]) -> str:
    """The id a CreateMultipartUpload 200 answer carries. Without it (a server that failed
    after its status line) the upload was made or not, nobody can tell, as for an answer
    lost: a retryable ``InternalError``."""
    upload_id = answer.get("UploadId")
    if not upload_id:
        raise ObjectError(
            "InternalError",
            "CreateMultipartUpload answered 200 without an UploadId",
            retryable=True,
        )
    return str(upload_id)


async def start_and_abort(
    client: S3Client, bucket: str, key: str, params: Mapping[str, str], attempts: int
) -> dict[str, Any]:
    """Start a multipart upload of ``key`` (with the run's upload ``params``) and abort it:
    the bucket exists, these credentials may write there, and the destination takes the
    settings (and applies ``--sse``, as its answer says). The abort is tried ``attempts``
    times (a failure of its own: the caller's retry of the whole would start another upload
    and leave this one); one that fails leaves an empty upload, said once, and one gone
    already (its answer was lost) is done. The answer to its start: the encryption the
    destination gives an upload (``ServerSideEncryption``: the bucket's default, without
    ``--sse``)."""
    answer: dict[str, Any] = await client.create_multipart_upload(Bucket=bucket, Key=key, **params)
    upload_id = upload_id_of(answer)
    abort = functools.partial(
        client.abort_multipart_upload, Bucket=bucket, Key=key, UploadId=upload_id
    )
    try:
        await RetryPolicy(attempts).call(abort)
    except ObjectError as exc:
        if exc.code not in _UPLOAD_GONE:
            log.warning(
                "the write check's upload of %r could not be aborted (%s): give the "
                "destination credentials s3:AbortMultipartUpload, or uploads a failed run "
                "leaves stay too",
                key,
                exc.code,
            )
    check_applied(params, answer, "the write check's upload")
    return answer


class UploadCheck:
    """Whether the destination refuses any upload as the run sends it, asked once (by the
    start-up check's upload, started with the run's ``params`` and aborted) when an object's
    upload was refused: the credentials may not write there, or a bucket policy denies
    uploads without a header the run does not send (an encryption, an ACL). Then every object
    would be refused the same way, each after its download; else the refusal is the object's.
    ``advice`` ends what it says: what to check, naming the flags of the run's command."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        params: Mapping[str, str],
        attempts: int,
        *,
        advice: str = _UPLOAD_ADVICE,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.params = dict(params)
        self.attempts = attempts
        self.advice = advice
        self._lock = asyncio.Lock()
        self._asked = False
        self._refusal: str | None = None

    async def refusal(self) -> str | None:
        """What to say when the destination refuses the check's upload too (None: it took
        it, or the check could not tell)."""
        async with self._lock:
            if not self._asked:
                self._asked = True
                self._refusal = await self._ask()
            return self._refusal

    async def _ask(self) -> str | None:
        try:
            await RetryPolicy(self.attempts).call(
                functools.partial(
                    start_and_abort,
                    self.client,
                    self.bucket,
                    self.key,
                    self.params,
                    self.attempts,
                )
            )
        except ObjectError as exc:
            if exc.code in _REFUSED:
                return (
                    f"the destination refuses any upload as this run sends it (an upload of "
                    f"{self.key!r} was refused too: {exc.code}); {self.advice}"
                )
        except EncryptionNotApplied:
            pass
        return None


class DestinationSettings(Protocol):
    """What opening the destination needs, in every kind of backup."""

    @property
    def dest_bucket(self) -> str: ...
    @property
    def dest_profile(self) -> str | None: ...
    @property
    def effective_dest_endpoint(self) -> str | None: ...
    @property
    def region(self) -> str | None: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def part_concurrency(self) -> int: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def read_timeout(self) -> float: ...


async def open_destination(
    stack: contextlib.AsyncExitStack,
    settings: DestinationSettings,
    *,
    fast_path: bool = False,
    write_probe: str | None = None,
    settings_probe: str | None = None,
    upload_params: Mapping[str, str] | None = None,
    check: bool = True,
    prefix: str = "",
    request_payer: str | None = None,
    answers: list[dict[str, Any]] | None = None,
) -> S3Client:
    """The destination client, its bucket checked usable, or one clear error; checked
    through the fast path with ``fast_path``, by an upload of ``write_probe`` started and
    aborted when given (``check_bucket``, which adds the answers to such uploads to
    ``answers``); not checked without ``check``. With ``request_payer`` its requests agree
    to pay (``open_client``): a server-side copy reads the source."""
    client = await open_client(
        stack,
        role="destination",
        profile=settings.dest_profile,
        endpoint_url=settings.effective_dest_endpoint,
        region=settings.region,
        max_pool_connections=settings.concurrency * settings.part_concurrency + 8,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        request_payer=request_payer,
    )
    if not check:
        return client
    timeouts = (settings.connect_timeout, settings.read_timeout) if fast_path else None
    await check_bucket(
        client,
        settings.dest_bucket,
        role="destination",
        fast_timeouts=timeouts,
        write_probe=write_probe,
        settings_probe=settings_probe,
        upload_params=upload_params,
        prefix=prefix,
        answers=answers,
    )
    return client


def _plain_http(endpoint_url: str) -> bool:
    """An ``http://`` endpoint reached without a proxy: no TLS anywhere on the way, so the
    client need not build a TLS context (loading the CA bundle: 17 ms of CPU per client,
    before the first request). An https endpoint, or any proxy, keeps verification on."""
    return endpoint_url.lower().startswith("http://") and not get_environ_proxies(endpoint_url)

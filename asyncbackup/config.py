"""Frozen, keyword-only configuration, validated once when it is built."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

from .checkpoint_identity import endpoint_for_checkpoint
from .errors import ConfigError, ObjectError
from .filters import patterns

MiB = 1024 * 1024
S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_PART_SIZE = 5 * 1024 * MiB
S3_MAX_PARTS = 10_000

OnComplete = Literal["archive", "delete"]
SseMode = Literal["AES256", "aws:kms"]
SSE_CHOICES: tuple[SseMode, ...] = ("AES256", "aws:kms")
RequestPayer = Literal["requester"]
REQUEST_PAYER_CHOICES: tuple[RequestPayer, ...] = ("requester",)
ChecksumMode = Literal["md5", "crc32", "crc32c", "sha256", "none"]
ON_COMPLETE_CHOICES: tuple[OnComplete, ...] = ("archive", "delete")
CHECKSUM_CHOICES: tuple[ChecksumMode, ...] = ("md5", "crc32", "crc32c", "sha256", "none")


def normalize_source_path(source_path: str) -> str:
    """The job's folder without leading or trailing slashes; ``""`` is the whole bucket."""
    return source_path.strip("/")


def refuse_url(what: str, value: str, bucket_flag: str, bucket: str) -> None:
    """A folder given as the AWS CLI spells a location (``s3://bucket/folder``) is refused
    (``ConfigError``), naming the folder alone: taken as it is, it is a key prefix that no
    key has (a backup of nothing, ending 0), or a destination folder named ``s3:``."""
    if value[:5].lower() != "s3://":
        return
    named, _, folder = value[5:].partition("/")
    folder = normalize_source_path(folder)
    other = "" if named == bucket else f"; it names the bucket {named!r}, not {bucket!r}"
    raise ConfigError(
        f"{what} {value!r} is an S3 URL: give the folder in the bucket alone, {folder!r} "
        f"(the bucket is {bucket_flag}{other})"
    )


class TransferSettings(Protocol):
    """The settings every kind of backup shares, validated by ``validate_transfer``."""

    @property
    def checkpoint_interval(self) -> int: ...
    @property
    def checkpoint_max_age(self) -> float: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def part_concurrency(self) -> int: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def part_size(self) -> int: ...
    @property
    def multipart_threshold(self) -> int: ...
    @property
    def on_complete(self) -> str: ...
    @property
    def keep_archives(self) -> int | None: ...
    @property
    def checksum(self) -> str: ...


def grown_part_size(part_size: int, size: int) -> int:
    """The part size for an object of ``size`` bytes, doubled to stay within 10,000 parts."""
    part = part_size
    while part * S3_MAX_PARTS < size:
        part *= 2
    return min(part, S3_MAX_PART_SIZE)


def text_path(flag: str, path: str | os.PathLike[str] | None) -> Path | None:
    """``path`` as a ``Path``, refused (``ConfigError``) when its name is not text here: bytes
    that are not UTF-8 (a folder named in latin-1), or any non-ASCII name where file names are
    ASCII (the C locale with ``PYTHONUTF8=0``). The checkpoint records it, and it, the report
    and the logs are JSON, which holds text only. A leading ``~`` is the home folder, as a
    shell would have made it (``--base-local-path=~/scratch``, a systemd unit, Python): not
    a folder named ``~`` in the working directory."""
    if path is None:
        return None
    try:
        out = Path(path).expanduser()
    except RuntimeError as exc:  # no HOME, no password entry
        raise ConfigError(f"{flag} {path}: {exc}; give the full path") from None
    text = str(out)
    if text.startswith("//") and not text.startswith("///"):
        # POSIX keeps exactly two leading slashes ("$PREFIX/stage" with PREFIX=/), which
        # Linux takes for one; os.path.commonpath() drops them, so every staged path was
        # found outside staging. The checkpoint records the path as the kernel sees it.
        out = Path(text[1:])
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(out).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ConfigError(
            f"{flag} {shown} is not UTF-8 text here (its bytes, or this locale's file names: "
            "LANG=C with PYTHONUTF8=0 makes them ASCII), and the checkpoint and the report, "
            "which are JSON, record it: give a path whose name is UTF-8 (a symbolic link to "
            "it will do), or run with LANG=C.UTF-8"
        ) from None
    return out


def check_numbers(**values: object) -> None:
    """Raise a ``ConfigError`` naming the first value that is no number (``None`` allowed
    for those optional): an embedder's ``multipart_threshold="64MiB"``, as the CLI spells
    it, or a concurrency read from an environment variable, met a comparison below as
    ``TypeError: '<' not supported between instances of 'str' and 'int'``."""
    for name, value in values.items():
        if value is None and name in ("keep_archives", "max_bandwidth"):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            sizes = ("multipart_threshold", "part_size", "max_bandwidth")
            hint = " of bytes (64 * 1024**2, not '64MiB')" if name in sizes else ""
            raise ConfigError(f"{name} must be a number{hint}, got {value!r}")


def check_positive(**values: int) -> None:
    """Raise a ``ConfigError`` naming the flag of the first value below 1."""
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def validate_transfer(settings: TransferSettings) -> None:
    check_numbers(
        checkpoint_interval=settings.checkpoint_interval,
        checkpoint_max_age=settings.checkpoint_max_age,
        concurrency=settings.concurrency,
        part_concurrency=settings.part_concurrency,
        max_attempts=settings.max_attempts,
        part_size=settings.part_size,
        multipart_threshold=settings.multipart_threshold,
        keep_archives=settings.keep_archives,
    )
    check_positive(
        checkpoint_interval=settings.checkpoint_interval,
        concurrency=settings.concurrency,
        max_attempts=settings.max_attempts,
    )
    if settings.part_concurrency < 1:  # no flag sets it: named as the API names it
        raise ConfigError(f"part_concurrency must be at least 1, got {settings.part_concurrency}")
    if settings.checkpoint_max_age <= 0:
        raise ConfigError("checkpoint_max_age must be positive")
    if not S3_MIN_PART_SIZE <= settings.part_size <= S3_MAX_PART_SIZE:
        raise ConfigError(
            f"--part-size must be between {S3_MIN_PART_SIZE} and {S3_MAX_PART_SIZE} bytes"
        )
    if settings.multipart_threshold < S3_MIN_PART_SIZE:
        raise ConfigError(f"--multipart-threshold must be at least {S3_MIN_PART_SIZE} bytes")
    if settings.on_complete not in ON_COMPLETE_CHOICES:
        raise ConfigError(f"on_complete must be one of {', '.join(ON_COMPLETE_CHOICES)}")
    if settings.keep_archives is not None:
        check_positive(keep_archives=settings.keep_archives)
    if settings.checksum not in CHECKSUM_CHOICES:
        raise ConfigError(f"--checksum must be one of {', '.join(CHECKSUM_CHOICES)}")


_STORAGE_CLASS = re.compile(r"[A-Z][A-Z0-9_]*")


def storage_classes(names: Sequence[str]) -> tuple[str, ...]:
    """``--exclude-storage-class`` values: storage class names, in capitals, sorted, once."""
    if isinstance(names, str):  # one name given where a sequence is wanted (the library)
        names = (names,)
    out = {str(name).strip().upper(): name for name in names}
    for upper, name in out.items():
        if not _STORAGE_CLASS.fullmatch(upper):
            raise ConfigError(
                f"--exclude-storage-class {name!r} is not a storage class name (GLACIER, "
                "DEEP_ARCHIVE...); give one class a flag, and the flag again for another"
            )
    return tuple(sorted(out))


@dataclass(frozen=True, kw_only=True, slots=True)
class BackupConfig:
    """Everything one S3-to-S3 backup needs. Field names follow the CLI flags."""

    source_bucket: str
    source_path: str
    dest_bucket: str
    base_local_path: Path
    source_profile: str | None = None
    dest_profile: str | None = None
    endpoint_url: str | None = None
    source_endpoint_url: str | None = None
    dest_endpoint_url: str | None = None
    region: str | None = None
    cleanup: bool = False
    checkpoint_dir: Path | None = None
    checkpoint_interval: int = 1
    checkpoint_max_age: float = 30.0
    ignore_checkpoints: bool = False
    on_complete: OnComplete = "archive"
    keep_archives: int | None = None  # the job's newest archives kept; None: every one
    concurrency: int = 128
    multipart_threshold: int = 64 * MiB
    part_size: int = 8 * MiB
    part_concurrency: int = 4
    max_attempts: int = 8
    checksum: ChecksumMode = "md5"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    # objects the listing gives in these storage classes (GLACIER, DEEP_ARCHIVE) are left out
    exclude_storage_classes: tuple[str, ...] = ()
    skip_existing: bool = False
    dest_write_only: bool = False  # destination credentials that may write but not list
    dest_prefix: str | None = None
    storage_class: str | None = None
    sse: SseMode | None = None
    sse_kms_key_id: str | None = None
    copy_tags: bool = False  # each object's tags (S3 object tagging) go with its copy
    # "requester": the source is a Requester Pays bucket, and this account pays for reading it
    request_payer: RequestPayer | None = None
    max_bandwidth: int | None = None
    direct: bool = False
    fast_path: bool = True  # the listing, GETs, PUTs, parts, CopyObject without botocore (fasts3/)
    processes: int = 1  # > 1: copy in this many worker processes (workerpool.py)
    list_streams: int = 8  # ListObjectsV2 streams over key ranges, when one is not enough

    def __post_init__(self) -> None:
        refuse_url("SOURCE_PATH", self.source_path, "--source-bucket", self.source_bucket)
        if self.dest_prefix is not None:
            refuse_url("--dest-prefix", self.dest_prefix, "--dest-bucket", self.dest_bucket)
        object.__setattr__(self, "source_path", normalize_source_path(self.source_path))
        object.__setattr__(
            self, "base_local_path", text_path("--base-local-path", Path(self.base_local_path))
        )
        object.__setattr__(
            self, "checkpoint_dir", text_path("--checkpoint-dir", self.checkpoint_dir)
        )
        for name in ("source_bucket", "dest_bucket"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} must not be empty")
        check_numbers(
            processes=self.processes,
            list_streams=self.list_streams,
            max_bandwidth=self.max_bandwidth,
        )
        validate_transfer(self)
        check_positive(processes=self.processes, list_streams=self.list_streams)
        object.__setattr__(self, "include", patterns("--include", self.include))
        object.__setattr__(self, "exclude", patterns("--exclude", self.exclude))
        object.__setattr__(
            self, "exclude_storage_classes", storage_classes(self.exclude_storage_classes)
        )
        if self.dest_prefix is not None:
            object.__setattr__(self, "dest_prefix", normalize_source_path(self.dest_prefix))
        self._check_endpoint_urls()
        # Known before the clients are made when the flags give both endpoints, or one
        # profile (or none) gives both sides the same; else checked once they are made.
        source, dest = self.effective_source_endpoint, self.effective_dest_endpoint
        if (source and dest) or (not source and not dest and self.same_profile):
            self.check_not_onto_source(source, dest)
        if self.sse is not None and self.sse not in SSE_CHOICES:
            raise ConfigError(f"--sse must be one of {', '.join(SSE_CHOICES)}")
        if self.request_payer is not None and self.request_payer not in REQUEST_PAYER_CHOICES:
            raise ConfigError("--request-payer takes one value: requester")
        if self.dest_write_only and self.skip_existing:
            raise ConfigError(
                "--skip-existing lists the destination, which --dest-write-only says these "
                "credentials cannot: leave one of them out"
            )
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise ConfigError("--sse-kms-key-id needs --sse aws:kms")
        if self.direct and (
            credentials_profile(self.source_profile) != credentials_profile(self.dest_profile)
        ):
            raise ConfigError(_DIRECT_NEEDS_ONE)
        if source and dest:  # else checked once the clients are made
            self.check_direct_endpoints(source, dest)
        if self.direct and self.max_bandwidth is not None:
            raise ConfigError(
                "--max-bandwidth limits the bytes that pass through this machine, and --direct "
                "copies server-side, where none do: leave one of them out"
            )
        if self.max_bandwidth is not None and self.max_bandwidth < 1024:
            raise ConfigError("--max-bandwidth must be at least 1KiB/s (1024 bytes a second)")
        if self.processes > self.concurrency:  # each takes one object in flight at least
            raise ConfigError(
                f"--processes {self.processes} is more than --concurrency {self.concurrency}: "
                "the processes share the objects in flight, one at least each; give "
                f"--concurrency {self.processes} or more, or fewer --processes"
            )
        if self.max_bandwidth is not None and self.max_bandwidth < 1024 * self.processes:
            # each process gets its share, of 1KiB/s at least: they would add up to more
            raise ConfigError(
                f"--max-bandwidth is shared by the {self.processes} --processes, at least "
                f"1KiB/s each: give {self.processes}KiB/s or more, or fewer --processes"
            )

    def _check_endpoint_urls(self) -> None:
        """An endpoint flag that is no URL is a usage error here, before the checks below
        read it (not an unexpected ValueError). Its value is not repeated: a URL may hold a
        password."""
        for flag, url in (
            ("--endpoint-url", self.endpoint_url),
            ("--source-endpoint-url", self.source_endpoint_url),
            ("--dest-endpoint-url", self.dest_endpoint_url),
        ):
            try:
                _ = urlsplit(url.strip()).port if url else None
            except ValueError as exc:
                raise ConfigError(
                    f"{flag} is not a URL ({exc}); give it as http(s)://host[:port]"
                ) from None

    @property
    def same_profile(self) -> bool:
        return self.source_profile == self.dest_profile

    def check_direct_endpoints(
        self, source_endpoint: str | None, dest_endpoint: str | None
    ) -> None:
        """Refuse ``--direct`` across two endpoints, with the endpoints the clients use (a
        flag's, a profile's, ``AWS_ENDPOINT_URL``'s): one endpoint however its URL is
        spelled (a trailing /, the host's case, :80)."""
        if self.direct and (
            endpoint_for_checkpoint(source_endpoint) != endpoint_for_checkpoint(dest_endpoint)
        ):
            raise ConfigError(_DIRECT_NEEDS_ONE)

    def check_not_onto_source(self, source_endpoint: str | None, dest_endpoint: str | None) -> None:
        """Refuse copies into SOURCE_PATH's own area of the source bucket, with the endpoints
        the clients use (a flag's, a profile's, ``AWS_ENDPOINT_URL``'s): under SOURCE_PATH
        (onto the objects, or where the next run copies them again), or above it
        (SOURCE_PATH/SOURCE_PATH/x lands on SOURCE_PATH/x)."""
        if (
            self.source_bucket == self.dest_bucket
            # one store however its URL is spelled (a trailing /, the host's case, :80)
            and endpoint_for_checkpoint(source_endpoint) == endpoint_for_checkpoint(dest_endpoint)
            and (
                self.dest_list_prefix.startswith(self.source_prefix)
                or self.source_prefix.startswith(self.dest_list_prefix)
            )
        ):
            raise ConfigError(
                "the copies would go under SOURCE_PATH in the source bucket itself (onto the "
                "objects, or where the next run copies them again): give another --dest-bucket "
                "or a --dest-prefix outside SOURCE_PATH (and not above it)"
            )

    @property
    def source_prefix(self) -> str:
        """The listing prefix: ``SOURCE_PATH/`` so that ``a/b1`` is not part of ``a/b``."""
        return f"{self.source_path}/" if self.source_path else ""

    @property
    def effective_source_endpoint(self) -> str | None:
        return self.source_endpoint_url or self.endpoint_url

    @property
    def effective_dest_endpoint(self) -> str | None:
        return self.dest_endpoint_url or self.endpoint_url

    def dest_key(self, key: str) -> str:
        """Where ``key`` goes: the same key, or with SOURCE_PATH replaced by --dest-prefix."""
        if self.dest_prefix is None:
            return key
        relative = key[len(self.source_prefix) :]
        if not self.dest_prefix and not relative:
            # SOURCE_PATH/ itself (a folder marker) at the bucket root: no object can be there,
            # and a request for the empty key goes to the bucket itself (S3: CreateBucket, 200)
            raise ObjectError(
                "InvalidDestinationKey",
                f"{key!r} is SOURCE_PATH/ itself, which --dest-prefix '' puts at the bucket "
                "root, where no object can be; leave it out with --exclude '' or give "
                "another --dest-prefix",
            )
        return f"{self.dest_prefix}/{relative}" if self.dest_prefix else relative

    @property
    def dest_write_probe(self) -> str | None:
        """With ``--dest-write-only``: the key whose upload, started and aborted, checks the
        destination at start (under the job's prefix, where a policy lets it write)."""
        return self.write_check_key if self.dest_write_only else None

    @property
    def dest_settings_probe(self) -> str | None:
        """With ``--sse`` or a storage class (and not ``--dest-write-only``, whose check is
        such an upload already): the key whose upload, started with them and aborted, checks
        at start that the destination takes them (and applies the encryption) - not at every
        object's upload, after its download."""
        settings = self.sse or self.storage_class
        return self.write_check_key if settings else None

    @property
    def write_check_key(self) -> str:
        """Under the job's prefix, where a policy lets it write; never an object's key."""
        return f"{self.dest_list_prefix}.asyncbackup-write-check"

    @property
    def dest_list_prefix(self) -> str:
        """The destination prefix that holds this job's copies."""
        return self.list_prefix_with(self.dest_prefix)

    def list_prefix_with(self, dest_prefix: str | None) -> str:
        """The destination prefix of this job's copies with ``--dest-prefix dest_prefix``."""
        if dest_prefix is None:
            return self.source_prefix
        dest_prefix = normalize_source_path(dest_prefix)
        return f"{dest_prefix}/" if dest_prefix else ""

    def part_size_for(self, size: int) -> int:
        return grown_part_size(self.part_size, size)


_DIRECT_NEEDS_ONE = (
    "--direct copies server-side with one set of credentials on one endpoint: give the same "
    "profile and endpoint for source and destination"
)


def credentials_profile(profile: str | None) -> str | None:
    """The profile a side given ``profile`` (its flag's, or None) takes its credentials from,
    as botocore resolves it: ``profile`` when given; else none (None) when access keys in the
    environment serve it, else the environment's profile (AWS_DEFAULT_PROFILE first), else
    "default"."""
    if profile is not None:
        return profile
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    for name in ("AWS_DEFAULT_PROFILE", "AWS_PROFILE"):
        if name in os.environ:
            return os.environ[name] or "default"
    return "default"

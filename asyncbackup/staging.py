"""Object key -> a safe local path inside the staging directory.

An S3 key is any UTF-8 string up to 1,024 bytes. Each ``/``-separated segment becomes one path
component, percent-encoded where it could escape or confuse the file system: ``%``, ``\\``,
control characters, and the segments ``""``, ``.`` and ``..``. A segment longer than the file
system allows is cut and given a hash suffix (``~`` and 16 hex digits), as is one that already
ends so, which would otherwise share a cut one's name. So no key can name a path outside the
staging root, and distinct keys map to distinct paths.

What remains is a file/folder collision (keys ``a`` and ``a/b``): the file system cannot hold
both. The second one to arrive is staged under ``.conflicts/<sha256 of the key>`` instead, a
name no key maps to: a key's first segment ``.conflicts`` is encoded as ``%2Econflicts``.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import errno
import itertools
import logging
import os
import re
import shutil
import sys
import threading
from hashlib import sha256
from pathlib import Path

from .errors import ConfigError, FatalRunError, StagingFullError
from .filemodes import (
    FILE_MODE,
    make_folders,
    private_opener,
    refuse_open_parent,
    refuse_shared_folder,
)
from .liveness import LivenessLock, is_lock_file, remove_lock_file, writer_alive

log = logging.getLogger("asyncbackup")

_MAX_SEGMENT_BYTES = 240
_SPECIAL_SEGMENTS = {"": "%", ".": "%2E", "..": "%2E%2E"}
_HASHED = re.compile(r"~[0-9a-f]{16}\Z")  # the suffix of a cut segment
#: a character ``encode_segment`` encodes whatever the file system's encoding
_ENCODED = re.compile(r"[%\\\x00-\x1f\x7f]")
_TMP_DIR = ".tmp"
#: tries at making a folder and renaming a staged file into it, which another process
#: sharing the staging tree may prune (empty) in between
_MOVE_ATTEMPTS = 10
#: folders a ``Staging`` remembers having made (the most recently used): keys come in listing
#: order, so those of one folder come together, and a bucket of millions of folders is not
#: remembered whole
_MADE_FOLDERS = 1024
_CONFLICT_DIR = ".conflicts"
_RESERVED_FIRST = {_CONFLICT_DIR: "%2E" + _CONFLICT_DIR[1:]}  # ours, under the staging root
_FS_ENCODING = sys.getfilesystemencoding()
_FS_UTF8 = codecs.lookup(_FS_ENCODING).name == "utf-8"


def _encode_char(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def _nameable(char: str) -> bool:
    """Whether a file name may hold ``char`` in the file system encoding: always in UTF-8;
    not a non-ASCII one where it is ASCII (the C locale with ``PYTHONUTF8=0``) or latin-1."""
    try:
        char.encode(_FS_ENCODING, "strict")
    except UnicodeEncodeError:
        return False
    return True


def encode_segment(segment: str) -> str:
    """One key segment as one safe path component."""
    if segment in _SPECIAL_SEGMENTS:
        return _SPECIAL_SEGMENTS[segment]
    if (_FS_UTF8 or segment.isascii()) and _ENCODED.search(segment) is None:
        encoded = segment  # no character to encode: the common case, without a look at each
    else:
        encoded = "".join(
            _encode_char(c)
            if c in "%\\"
            or ord(c) < 0x20
            or ord(c) == 0x7F
            or (not _FS_UTF8 and ord(c) > 0x7F and not _nameable(c))
            else c
            for c in segment
        )
    raw = encoded.encode("utf-8", "surrogatepass")
    if len(raw) > _MAX_SEGMENT_BYTES or _HASHED.search(encoded):
        digest = sha256(raw).hexdigest()[:16]
        head = raw[: _MAX_SEGMENT_BYTES - 18].decode("utf-8", "ignore")
        encoded = f"{head}~{digest}"
    return encoded


def relative_path_for_key(key: str) -> Path:
    """The path of ``key`` relative to the staging root; never absolute, never ``..``, never
    in the folder of conflicts."""
    return Path(*_segments_for_key(key))


def _segments_for_key(key: str) -> list[str]:
    """The components of ``relative_path_for_key(key)``."""
    segments = [encode_segment(segment) for segment in key.split("/")]
    segments[0] = _RESERVED_FIRST.get(segments[0], segments[0])
    return segments


def staging_root(base_local_path: Path, source_name: str) -> Path:
    """Where the objects of bucket ``source_name`` are staged (``github`` for a GitHub
    backup, whatever its owner: ``GitHubBackupConfig.source_name``)."""
    return base_local_path / encode_segment(source_name)


def temp_root(base_local_path: Path) -> Path:
    """Where every job on ``base_local_path`` writes its temporary files (``prepare`` empties
    it of a dead writer's: of anything not named ``<pid>-...``)."""
    return base_local_path / _TMP_DIR


def is_within(root: Path, path: Path) -> bool:
    root_s = os.path.abspath(root)
    path_s = os.path.abspath(path)
    # The common case (a staged file's path) without commonpath()'s split of both paths,
    # half of path_for(): normalised, a path that starts with root's components is within it.
    if path_s.startswith(root_s + "/"):
        return True
    # commonpath() drops the two leading slashes POSIX keeps: compared as it gives the root
    return os.path.commonpath([root_s, path_s]) == os.path.commonpath([root_s])


def out_of_inodes(where: Path) -> bool:
    """Whether the file system of ``where`` has no inode left for a new file (ENOSPC with
    blocks to spare); False when it does not say (some report no inode counts at all)."""
    try:
        stats = os.statvfs(where)
    except OSError:
        return False
    return stats.f_files > 0 and stats.f_favail == 0


def raise_if_disk_full(exc: OSError, where: Path) -> None:
    if exc.errno == errno.EFBIG:  # no space is missing: freeing some would not help
        raise StagingFullError(
            f"a file too large for staging directory {where} ({exc.strerror}: larger than "
            "the file size limit, ulimit -f, or than its file system takes - FAT32: 4 GiB); "
            "raise the limit or point --base-local-path at another file system, then run "
            "again to resume"
        ) from exc
    if exc.errno == errno.ENOSPC and out_of_inodes(where):
        raise StagingFullError(
            f"no free inodes left in staging directory {where} (one per file and folder; "
            "df -i shows them, df -h may show room): remove files (staged files of done "
            "objects can go), use --cleanup, or point --base-local-path at another file "
            "system, then run again to resume"
        ) from exc
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StagingFullError(
            f"no space left in staging directory {where}; free space or point "
            "--base-local-path at a larger disk, then run again to resume"
        ) from exc


def raise_if_unusable(exc: OSError, where: Path) -> None:
    """Raise the error that stops the run for a staging write no object is to blame for, and
    that every object after it would meet: a full disk (``StagingFullError``), a file system
    turned read-only (ext4 does after disk errors), the temporary folder removed or made
    unwritable (a file of ours refused there: its name has nothing of the object's)."""
    raise_if_disk_full(exc, where)
    if exc.errno == errno.EROFS:
        raise FatalRunError(
            f"staging directory {where} became read-only during the run ({exc.filename}): "
            "a file system is remounted so after disk errors (see dmesg); make it writable "
            "or point --base-local-path elsewhere, then run again to resume"
        ) from exc
    if not isinstance(exc.filename, str | Path) or exc.filename2 is not None:
        return  # a rename: the folder of the key's path may be the cause, that object's
    folder = Path(exc.filename).parent  # every staged file starts in the temporary one
    if folder.name != _TMP_DIR:
        return
    if exc.errno == errno.ENOENT and not folder.is_dir():
        raise FatalRunError(
            f"staging directory {where} was removed during the run ({exc.filename}); "
            "run again to resume (it is made again)"
        ) from exc
    if exc.errno in (errno.EACCES, errno.EPERM):  # a name of ours: no object's fault
        raise FatalRunError(
            f"cannot create files in staging directory {where} any more ({exc.strerror}: "
            f"{folder}); make it a directory this user can write (its mode, owner, "
            "chattr -i), or point --base-local-path elsewhere, then run again to resume"
        ) from exc


def _rename(tmp: Path, target: Path) -> None:
    """``tmp.replace(target)``; across file systems (EXDEV: a disk mounted at the staging
    folder of a bucket, below the temporary folder's), a copy, private as any staged file,
    then the removal of ``tmp``."""
    try:
        tmp.replace(target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        try:
            with tmp.open("rb") as source, open(target, "wb", opener=private_opener) as copy:
                shutil.copyfileobj(source, copy, 1 << 20)
        except BaseException:
            with contextlib.suppress(OSError):
                target.unlink()  # no half copy (a full disk) taking room
            raise
        tmp.unlink()


class Staging:
    """The staging tree of one job: ``<base_local_path>/<source_bucket>/...``."""

    def __init__(self, base_local_path: Path, source_bucket: str) -> None:
        self.base = base_local_path
        self.root = staging_root(base_local_path, source_bucket)
        self.tmp_dir = temp_root(base_local_path)
        self.conflict_dir = self.root / _CONFLICT_DIR
        # Creating folders for a commit and pruning empty ones after a cleanup happen in
        # worker threads: one lock keeps a prune from removing a folder a commit just made.
        self._folders = threading.Lock()
        # folders known to exist: no mkdir (and stat) per file; the last ``_MADE_FOLDERS`` used
        # (by the folder's text: a Path's hash costs 10,000 instructions, and one is looked
        # up for every staged file)
        self._made: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._tmp_names = itertools.count()
        self._tmp_prefix = f"{os.getpid()}-{os.urandom(4).hex()}-"  # unique per process
        #: held while this run writes temporary files: another run sharing the folder keeps them
        self._alive = LivenessLock(self.tmp_dir, self._tmp_prefix)
        self._unremoved = False  # a staged file could not be removed (logged once)

    def prepare(self) -> None:
        """Create the tree and remove temporary files crashed runs left behind - not those of
        runs still going: other jobs may share the base path (blocking)."""
        try:
            make_folders(self.root)
            make_folders(self.tmp_dir)
            refuse_open_parent(self.base)
            refuse_shared_folder(self.root, "staging folder")
            refuse_shared_folder(self.tmp_dir, "staging folder")
            self._alive.hold()
            # a run's lock file last: its files are judged by it, not by their pid
            leftovers = sorted(self.tmp_dir.iterdir(), key=lambda path: is_lock_file(path.name))
            for leftover in leftovers:
                if not writer_alive(self.tmp_dir, leftover.name):
                    if leftover.is_dir() and not leftover.is_symlink():
                        shutil.rmtree(leftover, ignore_errors=True)
                    elif is_lock_file(leftover.name):
                        remove_lock_file(leftover)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            leftover.unlink()
            self._probe()
        except OSError as exc:
            raise_if_disk_full(exc, self.base)
            raise ConfigError(
                f"cannot use staging directory {self.base}: {exc.strerror} ({exc.filename}); "
                "make it a directory this user can write, or point --base-local-path elsewhere"
            ) from exc

    def _probe(self) -> None:
        """Fail now, not once per object, when staging cannot take files: a tree an earlier
        run made (nothing to create here) on a file system since made read-only, or
        folders this user may not write. Every staged file starts in the temporary folder
        and is renamed into the tree."""
        probe = self.temp_path()
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
        probe.unlink()
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.root))

    def path_for(self, key: str) -> Path:
        path = self.root.joinpath(*_segments_for_key(key))  # root / relative_path_for_key(key)
        if not is_within(self.root, path):  # defence in depth; encoding already ensures it
            raise ValueError(f"key {key!r} maps outside staging")
        return path

    def conflict_path_for(self, key: str) -> Path:
        return self.conflict_dir / sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def temp_path(self) -> Path:
        self._alive.hold()  # once, before the first (a worker process prepares nothing)
        return self.tmp_dir / f"{self._tmp_prefix}{next(self._tmp_names)}"

    def close(self) -> None:
        """The run is over: another may take its leftovers, if any, for a dead run's."""
        self._alive.release()

    def store(self, key: str, data: bytes) -> Path:
        """Write ``data`` as the staged file of ``key``: a temporary file, then ``commit``
        (blocking; small objects, see ``localio``)."""
        tmp = self.temp_path()
        try:
            try:
                # os.open: three system calls, where open() adds fstat, ioctl and lseek
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            except OSError as exc:
                raise_if_unusable(exc, self.base)
                raise
            return self.commit(tmp, key)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def commit(self, tmp: Path, key: str) -> Path:
        """Move a finished temporary file to the key's path (blocking; run in a thread)."""
        try:
            with self._folders:
                try:
                    return self._move_into(tmp, self.path_for(key))
                except (FileExistsError, NotADirectoryError, IsADirectoryError):
                    return self._move_into(tmp, self.conflict_path_for(key))
        except OSError as exc:
            raise_if_unusable(exc, self.base)
            raise

    def _move_into(self, tmp: Path, target: Path) -> Path:
        """Rename ``tmp`` to ``target``, creating its folder unless this process knows it
        exists (with ``_folders`` held).

        Another process sharing the tree (``--processes``), whose lock is not this one, may
        prune the folder, empty, between its creation and the rename: it is made again."""
        # str(target.parent) (target has 2+ components), without making the Path
        folder = os.path.dirname(target)  # noqa: PTH120
        if folder in self._made:
            self._made.move_to_end(folder)
            try:
                _rename(tmp, target)
                return target
            except FileNotFoundError:  # removed behind our back: create it again
                self._made.pop(folder, None)
        for attempt in range(1, _MOVE_ATTEMPTS + 1):
            try:
                make_folders(target.parent)
                _rename(tmp, target)
            except FileNotFoundError:
                if attempt == _MOVE_ATTEMPTS or not tmp.exists():
                    raise
                continue
            self._made[folder] = None
            if len(self._made) > _MADE_FOLDERS:
                self._made.popitem(last=False)  # the least recently used
            return target
        raise AssertionError("unreachable")

    def remove(self, path: Path) -> None:
        """Delete a staged file and the folders it leaves empty (blocking).

        A file that cannot be deleted stays: its copy is at the destination all the same, so
        it must not fail the object (nor the run). The first such file is logged (a warning:
        staging fills up), the others at debug level."""
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            level = logging.DEBUG if self._unremoved else logging.WARNING
            self._unremoved = True
            log.log(
                level,
                "cannot remove staged file %s (%s); its copy is done, the file stays (and so "
                "may others, logged with --debug) - fix the permissions of %s for --cleanup "
                "to free the space",
                path,
                exc.strerror,
                self.root,
            )
            return
        parent = path.parent
        with self._folders:
            while parent != self.root and is_within(self.root, parent):
                try:
                    parent.rmdir()
                except OSError:
                    break
                self._made.pop(str(parent), None)
                parent = parent.parent

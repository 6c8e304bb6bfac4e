"""Byte storage under a registry URI: a local folder, or any pyarrow filesystem.

Two implementations share one small surface so the registry states its protocol once.
Every read is bounded (the caller names the most bytes it will take, checked from the
file's size before reading and again while reading), and only regular files are read: a
FIFO would block the reader forever and `/dev/zero` never ends. Every failure of the
storage itself (missing file, permission, an unreachable object store) is a typed
`StorageError`, never a bare OSError. The local one uses the operating system directly because it can give what object stores
cannot: fsync before rename (a crash never leaves a half-written file under its final
name) and exclusive directory creation (concurrent publishers get distinct versions).
"""

from __future__ import annotations

import os
import posixpath
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.fs as pafs

from nonstop.errors import RegistryError, StorageError, StoredFileTooLarge
from nonstop.redact import redact


class Storage(Protocol):
    def read_bytes(self, path: str, limit: int) -> bytes: ...
    def write_atomic(self, path: str, data: bytes) -> None: ...
    def exists(self, path: str) -> bool: ...
    def list_dir(self, path: str) -> list[str]: ...
    def claim_dir(self, path: str) -> bool: ...
    def create_new(self, path: str, data: bytes) -> bool: ...
    def join(self, *parts: str) -> str: ...


class LocalStorage:
    def __init__(self, root: str) -> None:
        self.root = root

    def join(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def read_bytes(self, path: str, limit: int) -> bytes:
        with _typed(path):
            # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: no symlinks
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise StorageError(f"{path} is not a regular file")
                _check_size(path, info.st_size, limit)
                with os.fdopen(fd, "rb", closefd=False) as handle:
                    data = handle.read(limit + 1)
            finally:
                os.close(fd)
            _check_size(path, len(data), limit)  # grown since the stat
            return data

    def write_atomic(self, path: str, data: bytes) -> None:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _fsync_dir(folder)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def list_dir(self, path: str) -> list[str]:
        try:
            with _typed(path):
                return sorted(os.listdir(path))
        except StorageError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return []
            raise

    def claim_dir(self, path: str) -> bool:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.mkdir(path)
        except FileExistsError:
            return False
        _fsync_dir(os.path.dirname(path))
        return True

    def create_new(self, path: str, data: bytes) -> bool:
        """Write `data` under `path` whole, unless `path` exists: False then, nothing written.
        A hard link is both exclusive and atomic, so a reader never sees a partial file."""
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        _fsync_dir(folder)
        return True


class ArrowStorage:
    """Object stores (s3://, gs://, ...): each object appears whole when its upload ends.

    Exclusive creation is not available through pyarrow, so `claim_dir` here only avoids
    versions already present; run one publisher at a time against an object store.
    """

    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")

    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def read_bytes(self, path: str, limit: int) -> bytes:
        with _typed(path):
            info = self.fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise StorageError(f"{path} does not exist")
            if info.type != pafs.FileType.File:
                raise StorageError(f"{path} is not a regular file")
            _check_size(path, info.size, limit)
            with self.fs.open_input_stream(path) as stream:
                data = stream.read(limit + 1)
            _check_size(path, len(data), limit)
            return data

    def write_atomic(self, path: str, data: bytes) -> None:
        with _typed(path), self.fs.open_output_stream(path) as stream:
            stream.write(data)

    def exists(self, path: str) -> bool:
        with _typed(path):
            return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def list_dir(self, path: str) -> list[str]:
        with _typed(path):
            infos = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(posixpath.basename(i.path) for i in infos)

    def claim_dir(self, path: str) -> bool:
        marker = posixpath.join(path, ".claim")
        if self.exists(path):
            return False
        self.write_atomic(marker, uuid.uuid4().hex.encode())
        return True

    def create_new(self, path: str, data: bytes) -> bool:
        """Best effort, as `claim_dir`: refuses a path that exists, and reads the object back
        so that of two writers racing on the same path, at most the last one is told True."""
        if self.exists(path):
            return False
        self.write_atomic(path, data)
        try:
            return self.read_bytes(path, len(data)) == data
        except StoredFileTooLarge:  # another writer's, longer object won
            return False


@contextmanager
def _typed(path: str) -> Iterator[None]:
    """The storage's own failures as a StorageError naming the file and the cause."""
    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StorageError(f"cannot access {path}: {reason}") from exc


def _check_size(path: str, size: int, limit: int) -> None:
    if size > limit:
        raise StoredFileTooLarge(f"{path} is larger than the limit of {limit} bytes")


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_storage(uri: str) -> Storage:
    if "://" not in uri or uri.startswith("file://"):
        path = uri.removeprefix("file://")
        return LocalStorage(str(Path(path).expanduser().resolve()))
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises several types for a bad URI
        # from None: the cause quotes the URI whole, credentials included
        raise RegistryError(redact(f"cannot open registry {uri!r}: {exc}", uri)) from None
    return ArrowStorage(fs, root)

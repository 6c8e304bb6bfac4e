"""Byte storage under a registry URI: a local folder, or any pyarrow filesystem.

Two implementations share one small surface so the registry states its protocol once.
The local one uses the operating system directly because it can give what object stores
cannot: fsync before rename (a crash never leaves a half-written file under its final
name) and exclusive directory creation (concurrent publishers get distinct versions).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path
from typing import Protocol

import pyarrow.fs as pafs

from nonstop.errors import RegistryError
from nonstop.redact import redact


class Storage(Protocol):
    def read_bytes(self, path: str) -> bytes: ...
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

    def read_bytes(self, path: str) -> bytes:
        return Path(path).read_bytes()

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
        return os.path.exists(path)

    def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

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

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def write_atomic(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as stream:
            stream.write(data)

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def list_dir(self, path: str) -> list[str]:
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
        return self.read_bytes(path) == data


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

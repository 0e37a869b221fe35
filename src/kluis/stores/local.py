"""A store in a local directory, with crash-safe writes.

Every put writes a temporary file beside the target, fsyncs it, renames it into
place and fsyncs the directory, so after a crash an object is either complete
or absent. Temporary files start with ``.tmp-`` and are ignored by ``list``.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from kluis.catalog import KluisError
from kluis.stores.base import ObjectInfo, Store, check_name

TMP_PREFIX = ".tmp-"


class LocalStore(Store):
    """Objects as files under ``root``; object ``a/b/c`` is file ``root/a/b/c``."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file in the way, no permission, a read-only file system
                in_the_way = isinstance(exc, FileExistsError)
                reason = "a file, not a directory, is in the way" if in_the_way else exc.strerror
                raise KluisError("StoreUnavailable", store=self.url, reason=reason) from None
        elif not self.root.is_dir():
            raise KluisError("StoreUnavailable", store=self.url, reason="directory does not exist")

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(name)
        tmp = path.parent / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self._fsync_dir(path.parent)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise KluisError("StoreWriteFailed", name=name, store=self.url, reason=exc.strerror) from exc

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("negative offset or length")
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise self.not_found(name) from None
        except OSError as exc:
            raise KluisError("StoreUnavailable", store=self.url, reason=exc.strerror) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self.not_found(name)  # a "folder" of names is not an object
            if length is None:
                length = max(0, os.fstat(fd).st_size - offset)
            return os.pread(fd, length, offset) if length else b""
        finally:
            os.close(fd)

    def stat(self, name: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(name))
        except (FileNotFoundError, NotADirectoryError):
            raise self.not_found(name) from None
        if not stat.S_ISREG(st.st_mode):
            raise self.not_found(name)
        return ObjectInfo(name, st.st_size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix points into, not the whole store.
        base_dir, _, _ = prefix.rpartition("/")
        start = self.root / base_dir if base_dir else self.root
        if not start.is_dir():
            return
        stack = [start]
        while stack:
            current = stack.pop()
            try:
                entries = list(os.scandir(current))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith(TMP_PREFIX):
                    continue
                rel = os.path.relpath(entry.path, self.root)
                if entry.is_dir(follow_symlinks=False):
                    if (rel + "/").startswith(prefix) or prefix.startswith(rel + "/"):
                        stack.append(Path(entry.path))
                elif rel.startswith(prefix):
                    try:
                        size = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
                    yield ObjectInfo(rel, size)

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return  # missing, or a folder of names: neither is an object
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EISDIR, errno.EPERM) and os.path.isdir(self._path(name)):
                return
            raise KluisError("StoreWriteFailed", name=name, store=self.url, reason=exc.strerror) from exc

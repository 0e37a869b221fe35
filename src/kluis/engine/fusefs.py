"""A files recovery point as a read-only FUSE file system (pyfuse3 on trio).

Directories are loaded when first looked at (one tree blob each) and file chunks
are fetched when read, through a small LRU cache, so browsing a large point costs
only what is looked at. Everything that touches the store runs in worker threads;
the FUSE loop itself never blocks on I/O.

The mount mirrors the point's root tree: a backup of ``/home/ann/docs`` shows as
``MOUNTPOINT/home/ann/docs``. Hard links share one inode; symlinks, FIFOs and
device nodes keep their type, mode, owner and times (device nodes cannot be
opened: the mount uses ``nodev``). Extended attributes are served as stored.

The file system unmounts itself after ``idle_timeout`` seconds without a request,
on SIGINT/SIGTERM, or when someone runs ``fusermount3 -u``. Needs the optional
``mount`` extra (``pip install 'kluis[mount]'``).
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import errno
import functools
import logging
import os
import signal
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from kluis.catalog import KluisError
from kluis.engine.repository import Repository
from kluis.engine.trees import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    SYMLINK,
    Node,
    decode_tree,
    os_name,
)

log = logging.getLogger("kluis.mount")

DEFAULT_IDLE_TIMEOUT = 600.0
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
# The file system never changes while mounted, so the kernel may cache everything for long.
_ATTR_TIMEOUT = 3600.0
_TYPE_BITS = {
    FILE: stat.S_IFREG,
    DIR: stat.S_IFDIR,
    SYMLINK: stat.S_IFLNK,
    FIFO: stat.S_IFIFO,
    CHARDEV: stat.S_IFCHR,
    BLOCKDEV: stat.S_IFBLK,
}


@dataclass
class _Entry:
    """One inode: a tree node, its parent, and (for directories, once loaded) its children."""

    ino: int
    node: Node
    parent: int
    path: str
    children: dict[bytes, int] | None = None
    pending_links: list[tuple[bytes, Node, str]] = field(default_factory=list)
    links_done: trio.Event | None = None
    # Regular files: start offset of each content piece, built on first open.
    layout: list[tuple[int, int, bytes | None]] | None = None


@dataclass
class MountStats:
    """Counters for tests and the log."""

    requests: int = 0
    blobs_loaded: int = 0
    cache_hits: int = 0
    started: float = field(default_factory=time.monotonic)


class _ChunkCache:
    """Plaintext chunks by id, least recently used dropped first, bounded in bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, key: bytes) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: bytes, data: bytes) -> None:
        if key in self._items or len(data) > self.limit:
            return
        self._items[key] = data
        self.size += len(data)
        while self.size > self.limit:
            _old, dropped = self._items.popitem(last=False)
            self.size -= len(dropped)


class RecoveryPointFS(pyfuse3.Operations):
    """The read-only view of one files recovery point."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self,
        repo: Repository,
        point_id: str,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        threads: int = 4,
    ) -> None:
        super().__init__()
        self.repo = repo
        self.point_id = point_id
        header, manifest = repo.load_point(point_id)
        if manifest.get("type") != "files" or "root" not in manifest:
            raise KluisError(
                "RecoveryMountFailed",
                point=point_id,
                mountpoint="-",
                reason=f"it is a {header.get('kind', '?')} recovery point; only files points can be mounted",
            )
        self.header = header
        self.manifest = manifest
        point_ns = _iso_to_ns(str(header.get("time", "")))
        root = Node(
            name="",
            type=DIR,
            mode=0o755,
            subtree=str(manifest["root"]),
            mtime_ns=point_ns,
            ctime_ns=point_ns,
            atime_ns=point_ns,
        )
        self._entries: dict[int, _Entry] = {
            pyfuse3.ROOT_INODE: _Entry(pyfuse3.ROOT_INODE, root, pyfuse3.ROOT_INODE, "")
        }
        self._by_path: dict[str, int] = {"": pyfuse3.ROOT_INODE}
        self._next_ino = pyfuse3.ROOT_INODE + 1
        self._dir_locks: dict[int, trio.Lock] = {}
        self._cache = _ChunkCache(cache_bytes)
        self._inflight: dict[bytes, trio.Event] = {}
        self._limiter = trio.CapacityLimiter(max(1, threads))
        self._handles: dict[int, int] = {}
        self._next_fh = 1
        self.last_activity = time.monotonic()
        self.stats = MountStats()

    # -- helpers ------------------------------------------------------------------------

    def _touch(self) -> None:
        self.last_activity = time.monotonic()
        self.stats.requests += 1

    def _entry(self, ino: int) -> _Entry:
        entry = self._entries.get(ino)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return entry

    async def _load_blob(self, blob_id: bytes, where: str) -> bytes:
        """A blob's plaintext from a worker thread; store and decode failures become EIO."""
        try:
            data = await trio.to_thread.run_sync(
                functools.partial(self.repo.load_blob, blob_id, where=where), limiter=self._limiter
            )
        except KluisError as exc:
            log.error("%s: %s", exc.code, exc.message)
            raise pyfuse3.FUSEError(errno.EIO) from None
        self.stats.blobs_loaded += 1
        return data

    def _new_entry(self, node: Node, parent: int, path: str) -> int:
        ino = self._next_ino
        self._next_ino += 1
        self._entries[ino] = _Entry(ino, node, parent, path)
        self._by_path[path] = ino
        return ino

    async def _listing(self, ino: int) -> dict[bytes, int]:
        """A directory's children by name, loading its tree blob on first use (hard links pending)."""
        entry = self._entry(ino)
        if entry.children is not None:
            return entry.children
        if entry.node.type != DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        lock = self._dir_locks.setdefault(ino, trio.Lock())
        async with lock:
            if entry.children is not None:  # another request loaded it meanwhile
                return entry.children
            children: dict[bytes, int] = {}
            if entry.node.subtree:
                where = f"the directory /{entry.path} of recovery point {self.point_id}"
                blob = bytes.fromhex(entry.node.subtree)
                nodes = decode_tree(await self._load_blob(blob, where), blob=blob.hex(), point=self.point_id)
                for node in nodes:
                    name = os_name(node.name)
                    if not _safe(name):
                        log.warning("skipping an unsafe name %r in /%s", node.name, entry.path)
                        continue
                    path = f"{entry.path}/{node.name}" if entry.path else node.name
                    if node.type == HARDLINK:
                        entry.pending_links.append((name, node, path))
                    else:
                        children[name] = self._by_path.get(path) or self._new_entry(node, ino, path)
            entry.children = children
        self._dir_locks.pop(ino, None)
        return children

    async def _children(self, ino: int) -> dict[bytes, int]:
        """A directory's complete listing, hard links included.

        A second name of an inode points at the path of its first name, which may lie
        anywhere in the point (even below this directory), so links are resolved after
        the listing is published; walking there only needs partial listings, so two
        directories linking into each other cannot wait on each other.
        """
        children = await self._listing(ino)
        entry = self._entries[ino]
        if entry.links_done is None:
            entry.links_done = trio.Event()
            pending, entry.pending_links = entry.pending_links, []
            try:
                for name, node, path in pending:
                    target = await self._resolve(node.target or "")
                    if target is None or self._entries[target].node.type != FILE:
                        log.warning("hard link /%s points at a missing file /%s", path, node.target)
                        continue
                    children[name] = target
            finally:
                entry.links_done.set()
        else:
            await entry.links_done.wait()
        return children

    async def _resolve(self, path: str) -> int | None:
        """The inode of a path relative to the point's root (hard link targets)."""
        known = self._by_path.get(path)
        if known is not None:
            return known
        ino = pyfuse3.ROOT_INODE
        for part in (p for p in path.split("/") if p):
            if self._entries[ino].node.type != DIR:
                return None
            found = (await self._listing(ino)).get(os_name(part))
            if found is None:
                return None
            ino = found
        return ino

    def _attributes(self, entry: _Entry) -> pyfuse3.EntryAttributes:
        node = entry.node
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = entry.ino
        attr.generation = 0
        attr.entry_timeout = _ATTR_TIMEOUT
        attr.attr_timeout = _ATTR_TIMEOUT
        attr.st_mode = _TYPE_BITS.get(node.type, stat.S_IFREG) | stat.S_IMODE(node.mode)
        attr.st_nlink = max(1, node.nlink or 1) if node.type == FILE else (2 if node.type == DIR else 1)
        attr.st_uid = node.uid
        attr.st_gid = node.gid
        attr.st_rdev = node.rdev or 0
        if node.type == FILE:
            size = node.size
        elif node.type == SYMLINK:
            size = len(os_name(node.target or ""))
        else:
            size = 0
        attr.st_size = size
        attr.st_blksize = 128 * 1024
        attr.st_blocks = (size + 511) // 512
        attr.st_atime_ns = node.atime_ns or node.mtime_ns
        attr.st_mtime_ns = node.mtime_ns
        attr.st_ctime_ns = node.ctime_ns or node.mtime_ns
        return attr

    def _layout(self, entry: _Entry) -> list[tuple[int, int, bytes | None]]:
        """(start offset, length, chunk id or None for a hole) for each piece of a file."""
        if entry.layout is None:
            pieces: list[tuple[int, int, bytes | None]] = []
            offset = 0
            for piece in entry.node.content or ():
                if isinstance(piece, int):
                    pieces.append((offset, piece, None))
                    offset += piece
                    continue
                blob_id = bytes.fromhex(piece)
                index_entry = self.repo.index.get(blob_id)
                if index_entry is None:
                    log.error("file /%s: chunk %s is not in the index", entry.path, piece)
                    raise pyfuse3.FUSEError(errno.EIO)
                pieces.append((offset, index_entry.raw_length, blob_id))
                offset += index_entry.raw_length
            entry.layout = pieces
        return entry.layout

    async def _chunk(self, blob_id: bytes, path: str) -> bytes:
        """A chunk's plaintext from the cache, or loaded once however many readers want it."""
        while True:
            cached = self._cache.get(blob_id)
            if cached is not None:
                self.stats.cache_hits += 1
                return cached
            waiting = self._inflight.get(blob_id)
            if waiting is None:
                break
            await waiting.wait()
        done = trio.Event()
        self._inflight[blob_id] = done
        try:
            data = await self._load_blob(blob_id, f"the file /{path} of recovery point {self.point_id}")
            self._cache.put(blob_id, data)
            return data
        finally:
            del self._inflight[blob_id]
            done.set()

    # -- FUSE requests ------------------------------------------------------------------

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Find ``name`` in a directory."""
        self._touch()
        if name == b".":
            return self._attributes(self._entry(parent_inode))
        if name == b"..":
            return self._attributes(self._entry(self._entry(parent_inode).parent))
        ino = (await self._children(parent_inode)).get(bytes(name))
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(self._entries[ino])

    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Metadata of an inode."""
        self._touch()
        return self._attributes(self._entry(inode))

    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileNameT:
        """A symlink's target, as stored."""
        self._touch()
        node = self._entry(inode).node
        if node.type != SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return pyfuse3.FileNameT(os_name(node.target or ""))

    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        """Directories need no handle state: the inode is the handle."""
        self._touch()
        if self._entry(inode).node.type != DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """List a directory; ``start_id`` is the position after the last entry returned."""
        self._touch()
        children = sorted((await self._children(fh)).items())
        for position, (name, ino) in enumerate(children[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(
                token, pyfuse3.FileNameT(name), self._attributes(self._entries[ino]), position
            ):
                break

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        """Nothing to release."""

    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Open a regular file for reading."""
        self._touch()
        entry = self._entry(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if entry.node.type != FILE:
            raise pyfuse3.FUSEError(errno.EACCES)
        self._layout(entry)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = inode
        # The content never changes, so the page cache may keep it across opens.
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        """Bytes ``off`` to ``off + size`` of an open file, chunks loaded as needed."""
        self._touch()
        ino = self._handles.get(fh)
        if ino is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        entry = self._entries[ino]
        layout = self._layout(entry)
        end = min(off + size, entry.node.size)
        if off >= end or not layout:
            return b""
        starts = [piece[0] for piece in layout]
        i = max(0, bisect.bisect_right(starts, off) - 1)
        out: list[bytes] = []
        pos = off
        while pos < end and i < len(layout):
            start, length, blob_id = layout[i]
            take_from = pos - start
            take = min(length - take_from, end - pos)
            if take > 0:
                if blob_id is None:
                    out.append(bytes(take))
                else:
                    data = await self._chunk(blob_id, entry.path)
                    out.append(data[take_from : take_from + take])
                pos += take
            i += 1
        self.last_activity = time.monotonic()
        return b"".join(out)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        """Forget an open file."""
        self._handles.pop(fh, None)

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        """An extended attribute as it was backed up."""
        self._touch()
        xattrs = self._entry(inode).node.xattrs or {}
        value = xattrs.get(bytes(name).decode("utf-8", "surrogateescape"))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return base64.b64decode(value)

    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> list[pyfuse3.XAttrNameT]:
        """Names of the stored extended attributes."""
        self._touch()
        xattrs = self._entry(inode).node.xattrs or {}
        return [pyfuse3.XAttrNameT(k.encode("utf-8", "surrogateescape")) for k in xattrs]

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """Sizes as the point's header states them; nothing is free (read-only)."""
        self._touch()
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = int(self.header.get("size", 0) or 0) // 4096
        data.f_bfree = data.f_bavail = 0
        data.f_files = int(self.header.get("files", 0) or 0)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data


def _safe(name: bytes) -> bool:
    """Whether a stored name can be shown in a directory (no separators, no dot names)."""
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\x00" not in name


def _iso_to_ns(text: str) -> int:
    try:
        return int(dt.datetime.fromisoformat(text).timestamp() * 1_000_000_000)
    except ValueError:
        return 0


def check_mountpoint(point_id: str, mountpoint: str) -> None:
    """RecoveryMountFailed unless ``mountpoint`` is an empty directory that is not mounted on."""

    def fail(reason: str) -> KluisError:
        return KluisError("RecoveryMountFailed", point=point_id, mountpoint=mountpoint, reason=reason)

    if not os.path.exists("/dev/fuse"):
        raise fail("/dev/fuse does not exist (FUSE is not available in this kernel or container)")
    if not os.path.isdir(mountpoint):
        raise fail("it is not an existing directory")
    if os.path.ismount(mountpoint):
        raise fail("something is already mounted there")
    try:
        if os.listdir(mountpoint):
            raise fail("the directory is not empty")
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from None


def mount_options(point_id: str) -> set[str]:
    """FUSE options: read-only, no device files or set-uid, named after the point."""
    return {"ro", "nodev", "nosuid", "fsname=kluis", f"subtype=kluis-{point_id[:12]}"}


async def _watch(fs: RecoveryPointFS, idle_timeout: float) -> None:
    """End the FUSE loop after ``idle_timeout`` seconds without a request, or on SIGINT/SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def idle() -> None:
            while True:
                quiet = time.monotonic() - fs.last_activity
                if quiet >= idle_timeout:
                    log.info("idle for %.0f s: unmounting", quiet)
                    return
                await trio.sleep(min(1.0, idle_timeout - quiet + 0.05))

        async def stop_on_signal() -> None:
            async for signum in signals:
                log.info("signal %d: unmounting", signum)
                return

        async with trio.open_nursery() as nursery:

            async def first(func: Callable[[], Any]) -> None:
                await func()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, idle)
            nursery.start_soon(first, stop_on_signal)
    pyfuse3.terminate()


def serve(
    fs: RecoveryPointFS,
    mountpoint: str,
    *,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Mount ``fs`` on ``mountpoint`` and serve requests until unmounted or idle.

    ``on_ready`` runs once the kernel accepted the mount (a background parent is told then).
    """
    check_mountpoint(fs.point_id, mountpoint)
    try:
        pyfuse3.init(fs, mountpoint, mount_options(fs.point_id))
    except (RuntimeError, OSError) as exc:
        raise KluisError(
            "RecoveryMountFailed", point=fs.point_id, mountpoint=mountpoint, reason=str(exc) or "FUSE refused"
        ) from None
    fs.last_activity = time.monotonic()
    unmounted = False
    try:
        if on_ready is not None:
            on_ready()

        async def run() -> None:
            async with trio.open_nursery() as nursery:

                async def watcher() -> None:
                    await _watch(fs, idle_timeout)

                nursery.start_soon(watcher)
                await pyfuse3.main()
                # The loop ended: unmounted from outside, or terminated by the watcher.
                nursery.cancel_scope.cancel()

        trio.run(run)
    finally:
        try:
            pyfuse3.close(unmount=True)
            unmounted = True
        except Exception as exc:  # the kernel may already have dropped the mount
            log.debug("close after unmount: %r", exc)
        log.info(
            "unmounted %s (unmount=%s) after %d requests, %d blobs loaded, %d cache hits",
            mountpoint,
            unmounted,
            fs.stats.requests,
            fs.stats.blobs_loaded,
            fs.stats.cache_hits,
        )

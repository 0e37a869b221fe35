"""File-level recovery from a disk recovery point: its file systems mounted read-only.

Three layers, all read-only:

1. :class:`~kluis.engine.disk_image_fs.DiskImageFS`, a FUSE file system with one
   regular file per disk of the point, backed by
   :class:`~kluis.engine.disk_restore.DiskImageReader` (blocks are fetched on demand).
   It is mounted in a private helper directory under ``/run/kluis/disk-mounts``
   (``KLUIS_RUN_DIR`` overrides ``/run/kluis``).
2. Each image is attached to a read-only loop device (``losetup -r -f --show -P``).
   Partitions are read with ``partx``; one the kernel shows no node for gets a loop
   device of its own at its offset.
3. Every file system found (``blkid -p``) is mounted read-only under
   ``DIR/<disk>`` (a disk without a partition table) or ``DIR/<disk>/part<N>``.
   Journals are never replayed (``noload`` for ext*, ``norecovery`` for XFS) and XFS
   gets ``nouuid``, since the original disk is usually mounted on the same host. A
   btrfs the kernel refuses (a duplicate fsid) is tried again with ``rescue=all``
   and skipped with a coded warning when that fails too; so is anything that is
   not a file system (swap, LVM, encrypted volumes).

Everything is undone, in reverse order, on ``kluis unmount DIR`` (which signals the
serving process through its session file), on SIGINT/SIGTERM, and after
``idle_timeout`` seconds without a read of the images while no process has a
file or working directory below ``DIR``. Needs root (loop devices and mounts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from kluis.catalog import KluisError
from kluis.engine.disk_image_fs import DiskImageFS, mount_failed
from kluis.engine.fusefs import DEFAULT_IDLE_TIMEOUT, check_mountpoint
from kluis.engine.repository import Repository

log = logging.getLogger("kluis.mount")

TOOLS = ("losetup", "partx", "blkid", "mount", "umount")
_COMMAND_TIMEOUT = 60.0
# Options per file system type: never write, never replay a journal, tolerate a second
# copy of a file system (same UUID) mounted on this host.
_OPTIONS: dict[str, list[str]] = {
    "ext2": ["ro,noload"],
    "ext3": ["ro,noload"],
    "ext4": ["ro,noload"],
    "xfs": ["ro,norecovery,nouuid"],
    "btrfs": ["ro", "ro,rescue=all"],
}
_NOT_MOUNTABLE = {"swap", "LVM2_member", "crypto_LUKS", "linux_raid_member", "zfs_member", "bcache"}


# -- loop devices and mounts -----------------------------------------------------------


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=_COMMAND_TIMEOUT)


@dataclass
class DiskSession:
    """The loop devices, mounts and directories of one mount of a disk point, undone in reverse."""

    point_id: str
    mountpoint: str
    images: Path
    disks: list[str]
    loops: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    file_systems: list[dict[str, str]] = field(default_factory=list)

    def warn(self, where: str, reason: str) -> None:
        """A file system that stays unmounted: logged and reported, the rest goes on."""
        message = mount_failed(self.point_id, where, reason)
        log.warning("%s: %s", message.code, message.message)
        self.warnings.append({"code": message.code, "where": where, "reason": reason})

    def _dir(self, path: Path) -> Path:
        if not path.exists():
            path.mkdir(mode=0o755)
            self.dirs.append(str(path))
        return path

    def _attach(self, image: Path, offset: int = 0, size: int = 0) -> str:
        argv = ["losetup", "-r", "-f", "--show"]
        argv += ["-o", str(offset), "--sizelimit", str(size)] if size else ["-P"]
        done = _run(*argv, str(image))
        if done.returncode != 0:
            raise mount_failed(
                self.point_id, self.mountpoint, f"losetup: {done.stderr.strip() or done.returncode}"
            )
        device = done.stdout.strip()
        self.loops.append(device)
        return device

    def attach_all(self) -> None:
        """Attach every disk image and mount every file system found on it."""
        for disk in self.disks:
            device = self._attach(self.images / disk)
            parts = _partitions(device)
            if not parts:
                self._mount(device, Path(self.mountpoint) / disk, f"{disk}", whole_disk=True)
                continue
            base = self._dir(Path(self.mountpoint) / disk)
            for number, start, size in parts:
                node = f"{device}p{number}"
                if not _is_block(node):  # no partition node (no udev/devtmpfs): a loop at the offset
                    node = self._attach(self.images / disk, start, size)
                self._mount(node, base / f"part{number}", f"{disk}/part{number}", whole_disk=False)
        if not self.mounts:
            found = "; ".join(f"{w['where']}: {w['reason']}" for w in self.warnings) or "no disks"
            raise mount_failed(
                self.point_id, self.mountpoint, f"no file system of its disks could be mounted ({found})"
            )

    def _mount(self, device: str, target: Path, where: str, *, whole_disk: bool) -> None:
        fstype = _probe(device)
        if fstype is None:
            self.warn(where, "no file system was found on it" if whole_disk else "no known file system")
            return
        if fstype in _NOT_MOUNTABLE:
            self.warn(where, f"it holds {fstype}, which is not a file system that can be mounted directly")
            return
        self._dir(target)
        errors: list[str] = []
        for options in _OPTIONS.get(fstype, ["ro"]):
            done = _run("mount", "-t", fstype, "-o", f"{options},nodev,nosuid", device, str(target))
            if done.returncode == 0:
                self.mounts.append(str(target))
                self.file_systems.append(
                    {"where": where, "type": fstype, "path": str(target), "device": device}
                )
                log.info("mounted %s (%s) of %s on %s", where, fstype, self.point_id, target)
                return
            errors.append(f"-o {options}: {done.stderr.strip() or done.returncode}")
        self.warn(where, f"the kernel refused to mount its {fstype} read-only ({'; '.join(errors)})")
        if self.dirs and self.dirs[-1] == str(target):  # made for this file system only
            os.rmdir(target)
            self.dirs.pop()

    def in_use(self) -> bool:
        """Whether any process has its working directory, root or an open file below the mount."""
        prefix = self.mountpoint.rstrip("/") + "/"
        me = str(os.getpid())
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid == me:
                continue
            links = [f"/proc/{pid}/cwd", f"/proc/{pid}/root"]
            try:
                links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
            except OSError:
                pass
            for link in links:
                try:
                    if (os.readlink(link) + "/").startswith(prefix):
                        return True
                except OSError:
                    continue
        return False

    def teardown(self) -> None:
        """Unmount, detach and remove what this session made; lazily where something is busy."""
        for target in reversed(self.mounts):
            done = _run("umount", target)
            if done.returncode != 0:
                log.warning("umount %s: %s; detaching it lazily", target, done.stderr.strip())
                _run("umount", "-l", target)
        self.mounts.clear()
        for device in reversed(self.loops):
            done = _run("losetup", "-d", device)
            if done.returncode != 0:
                log.warning("losetup -d %s: %s", device, done.stderr.strip())
        _wait_detached(self.loops, self.images)
        self.loops.clear()
        for path in reversed(self.dirs):
            try:
                os.rmdir(path)
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc)
        self.dirs.clear()


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _partitions(device: str) -> list[tuple[int, int, int]]:
    """(number, start byte, size in bytes) of each partition in the device's table."""
    done = _run("partx", "-g", "-b", "-o", "NR,START,SECTORS", device)
    parts: list[tuple[int, int, int]] = []
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields):
            parts.append((int(fields[0]), int(fields[1]) * 512, int(fields[2]) * 512))
    return parts


def _probe(device: str) -> str | None:
    """The file system type on a device (a low-level probe: no cache, no udev)."""
    done = _run("blkid", "-p", "-o", "value", "-s", "TYPE", device)
    kind = done.stdout.strip() if done.returncode == 0 else ""
    return kind or None


def _backing_files() -> dict[str, str]:
    """Loop device name -> backing file, from sysfs."""
    found: dict[str, str] = {}
    for entry in Path("/sys/block").glob("loop*"):
        try:
            found[entry.name] = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
    return found


def _wait_detached(loops: list[str], images: Path, timeout: float = 10.0) -> None:
    """Wait until the kernel let go of our loop devices (``losetup -d`` may finish later)."""
    names = {os.path.basename(d) for d in loops}
    deadline = time.monotonic() + timeout
    while True:
        left = {
            n for n, backing in _backing_files().items() if n in names and backing.startswith(str(images))
        }
        if not left or time.monotonic() > deadline:
            if left:
                log.warning("loop devices still attached: %s", ", ".join(sorted(left)))
            return
        time.sleep(0.05)


# -- sessions: found by ``kluis unmount DIR`` ------------------------------------------


def run_dir() -> Path:
    """Where helper mounts and session files live (root only)."""
    return Path(os.environ.get("KLUIS_RUN_DIR") or "/run/kluis") / "disk-mounts"


def session_file(mountpoint: str) -> Path:
    """The session file of a disk point mounted on ``mountpoint``."""
    key = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:24]
    return run_dir() / f"{key}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_session(mountpoint: str) -> dict[str, Any] | None:
    """The recorded session of a disk point mounted on ``mountpoint``, if there is one."""
    try:
        data: dict[str, Any] = json.loads(session_file(mountpoint).read_text())
    except (OSError, ValueError):
        return None
    return data


def stop_session(mountpoint: str, timeout: float = 60.0) -> None:
    """End the disk mount on ``mountpoint``: signal its process and wait until it cleaned up.

    When the process is gone (killed), its mounts, loop devices and helper mount are
    removed here from the session file.
    """
    path = session_file(mountpoint)
    info = find_session(mountpoint)
    if info is None:
        raise mount_failed("-", mountpoint, "no disk recovery point is mounted there")
    pid = int(info.get("pid", 0))
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while path.exists() and _alive(pid):
            if time.monotonic() > deadline:
                raise mount_failed(
                    str(info.get("point", "-")), mountpoint, f"process {pid} did not finish unmounting"
                )
            time.sleep(0.05)
        if not path.exists():
            return
    # The serving process died without cleaning up.
    images = Path(str(info.get("images", "")))
    stale = DiskSession(
        point_id=str(info.get("point", "-")),
        mountpoint=mountpoint,
        images=images,
        disks=[],
        loops=list(info.get("loops", [])),
        mounts=list(info.get("mounts", [])),
        dirs=list(info.get("dirs", [])),
    )
    stale.teardown()
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool and os.path.ismount(images):
        _run(tool, "-u", "-z", str(images))
    for leftover in (images, images.parent):
        try:
            os.rmdir(leftover)
        except OSError:
            pass
    path.unlink(missing_ok=True)


def _record(session: DiskSession) -> Path:
    path = session_file(session.mountpoint)
    body = {
        "pid": os.getpid(),
        "point": session.point_id,
        "mountpoint": session.mountpoint,
        "images": str(session.images),
        "loops": session.loops,
        "mounts": session.mounts,
        "dirs": session.dirs,
        "file_systems": session.file_systems,
        "warnings": session.warnings,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body) + "\n")
    os.replace(tmp, path)
    return path


# -- serving ---------------------------------------------------------------------------


def check_disk_mount(point_id: str, mountpoint: str) -> None:
    """RecoveryMountFailed unless this process can make loop devices and mounts."""
    if os.geteuid() != 0:
        raise mount_failed(
            point_id, mountpoint, "mounting the file systems of a disk point needs root (loop devices)"
        )
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise mount_failed(point_id, mountpoint, f"missing tools: {', '.join(missing)}")
    if not os.path.exists("/dev/loop-control"):
        raise mount_failed(point_id, mountpoint, "this kernel has no loop device support")


def serve_disks(
    repo: Repository,
    point_id: str,
    mountpoint: str,
    *,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    on_ready: Any = None,
) -> DiskSession:
    """Mount the file systems of a disk point under ``mountpoint`` and keep them until told to stop.

    ``on_ready(session)`` runs once everything is mounted. Returns the finished session.
    """
    mountpoint = os.path.abspath(mountpoint)
    check_disk_mount(point_id, mountpoint)
    check_mountpoint(point_id, mountpoint)
    fs = DiskImageFS(repo, point_id)
    existing = find_session(mountpoint)
    if existing is not None and _alive(int(existing.get("pid", 0))):
        raise mount_failed(point_id, mountpoint, f"process {existing.get('pid')} serves a disk mount there")
    base = run_dir()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    helper = Path(tempfile.mkdtemp(prefix="kluis-disks-", dir=base))
    images = helper / "images"
    images.mkdir(mode=0o700)
    names = [name.decode() for name in sorted(fs.names, key=fs.names.__getitem__)]
    session = DiskSession(point_id=point_id, mountpoint=mountpoint, images=images, disks=names)
    options = {"ro", "nodev", "nosuid", "fsname=kluis-disks", f"subtype=kluis-{point_id[:12]}"}
    try:
        pyfuse3.init(fs, str(images), options)
    except (RuntimeError, OSError) as exc:
        shutil.rmtree(helper, ignore_errors=True)
        raise mount_failed(
            point_id, mountpoint, f"the helper FUSE mount failed: {exc or 'refused'}"
        ) from None
    record: list[Path] = []
    try:
        trio.run(_run_session, fs, session, idle_timeout, on_ready, record)
    except BaseExceptionGroup as group:  # the nursery wraps what went wrong: show the first error
        leaves = list(_leaves(group))
        raise next((e for e in leaves if isinstance(e, KluisError)), leaves[0]) from None
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception as exc:  # the kernel may already have dropped it
            log.debug("close after unmount: %r", exc)
        for path in (images, helper):
            try:
                os.rmdir(path)
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc)
        for path in record:
            path.unlink(missing_ok=True)
        log.info("disk point %s unmounted from %s after %d requests", point_id, mountpoint, fs.requests)
    return session


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _run_session(
    fs: DiskImageFS, session: DiskSession, idle_timeout: float, on_ready: Any, record: list[Path]
) -> None:
    # The loop driver and mount read the images through this process's FUSE loop, so
    # every blocking step runs in a thread while the loop keeps serving.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            try:
                stop = trio.Event()

                async def on_signal() -> None:
                    async for signum in signals:
                        log.info("signal %d: unmounting", signum)
                        stop.set()
                        return

                nursery.start_soon(on_signal)
                with trio.CancelScope() as attaching:
                    nursery.start_soon(_cancel_when, stop, attaching)
                    await trio.to_thread.run_sync(session.attach_all, abandon_on_cancel=False)
                    record.append(_record(session))
                    if on_ready is not None:
                        on_ready(session)
                    fs.last_activity = time.monotonic()
                    await _idle(fs, session, idle_timeout, stop)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(session.teardown)
                pyfuse3.terminate()
                nursery.cancel_scope.cancel()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _idle(fs: DiskImageFS, session: DiskSession, idle_timeout: float, stop: trio.Event) -> None:
    """Return after ``idle_timeout`` seconds without image reads while nobody uses the mount."""
    while not stop.is_set():
        quiet = time.monotonic() - fs.last_activity
        if quiet >= idle_timeout:
            if not await trio.to_thread.run_sync(session.in_use):
                log.info("idle for %.0f s: unmounting", quiet)
                return
            fs.last_activity = time.monotonic()
            continue
        await trio.sleep(min(1.0, idle_timeout - quiet + 0.05))

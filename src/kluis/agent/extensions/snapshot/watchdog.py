"""The freeze watchdog: a process of its own that thaws frozen file systems in time.

The agent starts it *before* it freezes anything (``freeze.FreezeGuard`` does this)::

    python -I -B watchdog.py --seconds 30 --control-fd 5 [--status FILE] MOUNT...

It forks once and the launched process exits, so the watchdog is nobody's child and
lives in a session of its own: killing the agent, or the agent's whole process group,
does not kill it. It then waits on the control pipe from the agent:

- ``thawed`` arrives: the agent thawed by itself; exit without touching the mounts
  (another tool may freeze them later, and that freeze is not ours to undo);
- end of file (the agent died, even by SIGKILL): thaw now;
- ``--seconds`` pass (the agent hangs): thaw now;
- SIGTERM: thaw now.

It prints ``ready PID`` on standard output once it watches, and writes a JSON status
(why and what it thawed) to ``--status`` after thawing. Standard library only and no
lazy imports: it must never read a module from, or write bytecode to, a frozen file
system. Runs as a script (``python watchdog.py``) or as ``python -m
kluis.agent.extensions.snapshot.watchdog``.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import select
import signal
import sys
import time

# <linux/fs.h>: _IOWR('X', 119, int) and _IOWR('X', 120, int).
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


class _ThawNow(Exception):
    """Raised from the SIGTERM handler to leave the wait at once."""


def freeze_mount(path: str) -> None:
    """Freeze the file system mounted at ``path`` (FIFREEZE); OSError on failure."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    finally:
        os.close(fd)


def thaw_mount(path: str) -> bool:
    """Thaw the file system at ``path`` (FITHAW): True if it was frozen, False if it was not."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # not frozen
            return False
        raise
    finally:
        os.close(fd)
    return True


def thaw_all(mounts: list[str]) -> dict[str, str]:
    """Thaw each mount; per mount ``thawed``, ``not-frozen`` or the error."""
    results: dict[str, str] = {}
    for mp in mounts:
        try:
            results[mp] = "thawed" if thaw_mount(mp) else "not-frozen"
        except OSError as exc:
            results[mp] = f"error: {exc.strerror or exc}"
    return results


def _write_status(path: str | None, status: dict[str, object]) -> None:
    if not path:
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(status, fh)
        os.replace(tmp, path)
    except OSError:
        pass


def watch(mounts: list[str], seconds: float, control_fd: int, status_path: str | None) -> str:
    """Wait for the agent's word, its death or the deadline; thaw when needed. Returns why it ended."""
    started = time.monotonic()
    deadline = started + seconds
    received = b""
    reason = "deadline"
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "deadline"
                break
            ready, _, _ = select.select([control_fd], [], [], remaining)
            if not ready:
                continue
            data = os.read(control_fd, 256)
            if not data:
                reason = "agent-exited"
                break
            received += data
            if b"thawed" in received:
                _write_status(status_path, {"reason": "agent-thawed", "thawed": {}})
                return "agent-thawed"
    except _ThawNow:
        reason = "terminated"
    results = thaw_all(mounts)
    _write_status(
        status_path,
        {
            "reason": reason,
            "thawed": results,
            "after_seconds": round(time.monotonic() - started, 3),
            "at": time.time(),
        },
    )
    return reason


def main(argv: list[str] | None = None) -> int:
    """Entry point: detach, report ready, watch."""
    parser = argparse.ArgumentParser(description="Thaw frozen file systems if the agent does not.")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--status", default=None)
    parser.add_argument("mounts", nargs="*")
    args = parser.parse_args(argv)

    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    if os.fork():
        os._exit(0)  # the launched process ends; the watchdog is reparented to init
    try:
        os.setsid()
    except OSError:
        pass
    os.chdir("/")  # never hold a watched mount busy

    def on_term(_sig: int, _frame: object) -> None:
        raise _ThawNow()

    signal.signal(signal.SIGTERM, on_term)
    os.write(1, f"ready {os.getpid()}\n".encode())
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)  # the agent reads stdout to its end
    os.close(devnull)
    try:
        watch(args.mounts, args.seconds, args.control_fd, args.status)
    except _ThawNow:
        # SIGTERM between the wait and the thaw: thaw anyway.
        thaw_all(args.mounts)
    return 0


if __name__ == "__main__":
    sys.exit(main())

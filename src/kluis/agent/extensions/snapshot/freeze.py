"""Freezing file systems for a snapshot, always with a watchdog that thaws them in time.

A frozen file system blocks every writer in uninterruptible sleep, so a freeze that
is never undone hangs the machine's applications. Three things thaw:

1. ``FreezeGuard.__exit__`` (a ``finally``): the normal path;
2. the watchdog process (``watchdog.py``), started before the first freeze, when the
   agent dies (SIGKILL included) or hangs past ``safe_freeze_wait_seconds``;
3. a failed freeze of one mount thaws the mounts frozen before it at once.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from kluis.catalog import KluisError

from .watchdog import freeze_mount, thaw_mount

WATCHDOG_SCRIPT = str(Path(__file__).with_name("watchdog.py"))
# How long the watchdog may take to report ready before the freeze is given up.
WATCHDOG_START_SECONDS = 10.0


def _freeze_reason(exc: OSError) -> str:
    if exc.errno == errno.EBUSY:
        return "it is already frozen (by another tool or an earlier run)"
    if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
        return "this file system type cannot be frozen"
    if exc.errno == errno.EPERM:
        return "freezing needs root (CAP_SYS_ADMIN)"
    return exc.strerror or str(exc)


class Watchdog:
    """A running watchdog process, seen from the agent."""

    def __init__(self, pid: int, control_fd: int, status_path: str) -> None:
        self.pid = pid
        self._control_fd: int | None = control_fd
        self.status_path = status_path

    @classmethod
    def start(cls, mounts: list[str], seconds: float, status_path: str | None = None) -> Watchdog:
        """Start a watchdog for ``mounts`` and wait until it watches."""
        if status_path is None:
            fd, status_path = tempfile.mkstemp(prefix="kluis-freeze-watchdog-", suffix=".json")
            os.close(fd)
            os.unlink(status_path)
        read_end, write_end = os.pipe()
        cmd = [
            sys.executable,
            "-I",  # isolated: no user site, no script dir on sys.path shadowing stdlib
            "-B",  # never write bytecode (a frozen file system would block it)
            WATCHDOG_SCRIPT,
            "--seconds",
            repr(float(seconds)),
            "--control-fd",
            str(read_end),
            "--status",
            status_path,
            *mounts,
        ]
        try:
            proc = subprocess.Popen(
                cmd,
                pass_fds=(read_end,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # not in the agent's process group
                cwd="/",
            )
        except OSError as exc:
            os.close(read_end)
            os.close(write_end)
            raise KluisError("FreezeWatchdogFailed", reason=str(exc)) from exc
        os.close(read_end)
        assert proc.stdout is not None and proc.stderr is not None
        line = b""
        deadline = time.monotonic() + WATCHDOG_START_SECONDS
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, remaining))
            if not ready:
                break
            chunk = os.read(proc.stdout.fileno(), 64)
            if not chunk:
                break
            line += chunk
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stdout.close()
        proc.stderr.close()
        words = line.decode(errors="replace").split()
        if len(words) != 2 or words[0] != "ready":
            os.close(write_end)  # a half-started watchdog sees EOF and thaws nothing frozen
            reason = err.splitlines()[-1] if err else f"it did not report ready (exit {proc.returncode})"
            raise KluisError("FreezeWatchdogFailed", reason=reason)
        return cls(int(words[1]), write_end, status_path)

    def alive(self) -> bool:
        """True while the watchdog process runs (an exited one not yet reaped is not)."""
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return False
        return state != "Z"

    def done(self) -> None:
        """Tell the watchdog the agent has thawed, so it exits without thawing."""
        if self._control_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._control_fd, b"thawed\n")
        os.close(self._control_fd)
        self._control_fd = None

    def status(self, wait: float = 0.0) -> dict[str, Any] | None:
        """The watchdog's status file once written (waits up to ``wait`` seconds)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                with open(self.status_path, encoding="utf-8") as fh:
                    data: dict[str, Any] = json.load(fh)
                return data
            except (OSError, ValueError):
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.02)

    def cleanup(self) -> None:
        """Remove the status file."""
        with contextlib.suppress(OSError):
            os.unlink(self.status_path)


class FreezeGuard:
    """Freeze mounts for the ``with`` body; always thaws on exit.

    ::

        with FreezeGuard(["/srv", "/var/lib/db"], safe_freeze_wait_seconds=30) as guard:
            take_snapshot()
        guard.window_exceeded  # True if the freeze may have ended before the body did

    A mount that cannot be frozen raises ``UserErrorFsFreezeFailed`` after thawing the
    ones frozen before it.
    """

    def __init__(
        self,
        mounts: list[str],
        safe_freeze_wait_seconds: float,
        *,
        status_path: str | None = None,
    ) -> None:
        if safe_freeze_wait_seconds <= 0:
            raise ValueError("safe_freeze_wait_seconds must be positive")
        self.mounts = list(dict.fromkeys(os.path.realpath(m) for m in mounts))
        self.seconds = float(safe_freeze_wait_seconds)
        self.status_path = status_path
        self.frozen: list[str] = []
        self.watchdog: Watchdog | None = None
        self.started = 0.0
        self.elapsed = 0.0
        self.window_exceeded = False
        self.watchdog_status: dict[str, Any] | None = None

    def __enter__(self) -> FreezeGuard:
        if not self.mounts:
            return self
        # The watchdog's clock starts before the first freeze: it never thaws later than
        # ``seconds`` after any freeze began.
        self.watchdog = Watchdog.start(self.mounts, self.seconds, self.status_path)
        self.started = time.monotonic()
        for mp in self.mounts:
            try:
                freeze_mount(mp)
            except OSError as exc:
                self._thaw()
                raise KluisError(
                    "UserErrorFsFreezeFailed", mountpoint=mp, reason=_freeze_reason(exc)
                ) from exc
            self.frozen.append(mp)
        return self

    def _thaw(self) -> None:
        errors: list[str] = []
        for mp in reversed(self.frozen):
            try:
                thaw_mount(mp)
            except OSError as exc:
                errors.append(f"{mp}: {exc.strerror or exc}")
        self.frozen.clear()
        if self.started:
            self.elapsed = time.monotonic() - self.started
            self.window_exceeded = self.elapsed >= self.seconds
        if self.watchdog is not None:
            self.watchdog.done()
            self.watchdog_status = self.watchdog.status(wait=0.5 if self.window_exceeded else 0.0)
            self.watchdog.cleanup()
            self.watchdog = None
        if errors:
            # Only when FITHAW itself failed: the watchdog has already gone, so say so loudly.
            raise KluisError("UserErrorFsFreezeFailed", mountpoint=", ".join(errors), reason="thawing failed")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._thaw()

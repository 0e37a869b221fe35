"""Helpers for the snapshot extension's tests: commands, loop devices, mounts, writers."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def run(*argv: str) -> str:
    """Run a command, fail the test with its stderr if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


class Mounts:
    """Loop devices and mounts made by one test, torn down in reverse order."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, str]] = []

    def loop(self, image: Path) -> str:
        dev = run("losetup", "-f", "--show", str(image)).strip()
        self._undo.append(("loop", dev))
        return dev

    def mount(self, source: str, target: Path, *options: str, fstype: str | None = None) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        argv = ["mount"] + (["-t", fstype] if fstype else [])
        if options:
            argv += ["-o", ",".join(options)]
        run(*argv, source, str(target))
        self._undo.append(("mount", str(target)))
        return target

    def close(self) -> None:
        for kind, what in reversed(self._undo):
            if kind == "mount":
                if not os.path.ismount(what):
                    continue  # the test unmounted it already
                # Thaw first: a frozen file system cannot be unmounted and blocks writers.
                subprocess.run(["fsfreeze", "-u", what], capture_output=True, check=False)
                for _ in range(50):
                    if subprocess.run(["umount", what], capture_output=True, check=False).returncode == 0:
                        break
                    time.sleep(0.1)
            else:
                subprocess.run(["losetup", "-d", what], capture_output=True, check=False)
        self._undo.clear()


@dataclass
class Guest:
    """The test VM: its disk image, loop device and mounted guest file system."""

    image: Path
    device: str
    mountpoint: Path


def make_guest(host: Path, mounts: Mounts, where: Path, size_mib: int = 64) -> Guest:
    """An ext4 image on ``host``, attached and mounted at ``where``."""
    image = host / "vm" / "root.img"
    image.parent.mkdir(exist_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(size_mib * 1024 * 1024)
    run("mkfs.ext4", "-q", "-F", str(image))
    dev = mounts.loop(image)
    return Guest(image, dev, mounts.mount(dev, where))


def write_finishes(path: Path, within: float) -> float | None:
    """Write and fsync ``path`` in a child process; seconds it took, or None if not done in time.

    A writer blocked by a freeze cannot be killed, so the child is never waited on
    past ``within``; the fixtures' teardown thaws the mount, which lets it finish.
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            "python3",
            "-c",
            f"import os\nf=open({str(path)!r},'w')\nf.write('x')\nf.flush()\nos.fsync(f.fileno())",
        ]
    )
    while time.monotonic() - started < within:
        if proc.poll() is not None:
            return time.monotonic() - started
        time.sleep(0.02)
    stragglers.append(proc)
    return None


stragglers: list[subprocess.Popen[bytes]] = []


def root_script(path: Path, body: str, mode: int = 0o700) -> Path:
    """A shell script owned by root with ``mode``."""
    path.write_text("#!/bin/sh\n" + body + "\n")
    os.chown(path, 0, 0)
    path.chmod(mode)
    return path

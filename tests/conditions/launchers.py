"""Ways to start a ``kluis`` process under a changed world: a Landlock policy, a later clock.

Both are small Python prologues run with ``python -c`` that change the process and
then hand over to the real ``kluis`` command line; nothing in Kluis is replaced.

- ``landlock_denying_exec(directory)``: a Landlock ruleset (the kernel's unprivileged
  sandboxing LSM) that lets programs run from everywhere except ``directory`` and
  below, the way an SELinux, AppArmor or fapolicyd policy denies a folder. ``execve``
  there fails with EACCES.
- ``clock_ahead(seconds)``: the process reads the wall clock ``seconds`` later than it
  is (``time.time``/``time.time_ns``), as if it ran that much later; set before Kluis
  is imported, so every ``time.time`` Kluis binds sees it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

# Landlock syscalls and flags (include/uapi/linux/landlock.h; the numbers are the same on
# every architecture that has them).
SYS_LANDLOCK_CREATE_RULESET = 444
LANDLOCK_CREATE_RULESET_VERSION = 1

_LANDLOCK = r"""
import ctypes, os, stat, struct, sys
deny = os.path.realpath(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
EXECUTE = 1  # LANDLOCK_ACCESS_FS_EXECUTE
attr = struct.pack("<Q", EXECUTE)  # handled_access_fs: only execution is governed
ruleset = libc.syscall(444, attr, len(attr), 0)
if ruleset < 0:
    sys.exit("landlock_create_ruleset: " + os.strerror(ctypes.get_errno()))

def allow(path):
    try:
        st = os.stat(path)
    except OSError:
        return
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        rule = struct.pack("<Qi", EXECUTE, fd)  # struct landlock_path_beneath_attr (packed)
        if libc.syscall(445, ruleset, 1, rule, 0) != 0:
            sys.exit("landlock_add_rule " + path + ": " + os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)

# Allow every branch of the tree except the path down to the denied folder.
here = "/"
for part in deny.split("/")[1:]:
    for name in os.listdir(here):
        if name != part:
            allow(os.path.join(here, name))
    here = os.path.join(here, part)
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required by landlock_restrict_self
    sys.exit("prctl: " + os.strerror(ctypes.get_errno()))
if libc.syscall(446, ruleset, 0) != 0:
    sys.exit("landlock_restrict_self: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[2], sys.argv[2:])
"""

_CLOCK = r"""
import sys, time
shift = float(sys.argv.pop(1))
real, real_ns = time.time, time.time_ns
time.time = lambda: real() + shift
time.time_ns = lambda: real_ns() + int(shift * 1e9)
from kluis.cli.main import app
app()
"""


@functools.cache
def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is missing or switched off."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return int(version) if version > 0 else 0


def landlock_denying_exec(directory: os.PathLike[str] | str) -> list[str]:
    """argv prefix: run the rest of the command with execution denied under ``directory``."""
    return [sys.executable, "-c", _LANDLOCK, os.fspath(directory)]


def kluis_with_clock_ahead(seconds: float) -> list[str]:
    """argv prefix for ``kluis ARGS`` whose wall clock reads ``seconds`` later than the machine's."""
    return [sys.executable, "-c", _CLOCK, str(seconds)]

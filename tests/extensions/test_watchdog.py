"""The freeze watchdog: the agent is killed or hangs while the guest file system is frozen.

An "agent" process freezes the guest through the extension's API and then stops
making progress. The test then SIGKILLs the agent's whole process group, or
SIGSTOPs it, and checks that a write to the guest completes within the bound
(``safe_freeze_wait_seconds`` plus a margin). Writes run in a child process that is
never waited on past the bound, and the fixtures thaw in teardown, so a failing
watchdog fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.extensions.conftest import Guest
from tests.extensions.helpers import write_finishes

SAFE_FREEZE_WAIT = 3.0
MARGIN = 2.0

AGENT = """
import sys, time
from kluis.agent.extensions.snapshot import FreezeGuard
with FreezeGuard([sys.argv[1]], float(sys.argv[2]), status_path=sys.argv[3]) as guard:
    print("frozen", guard.watchdog.pid, flush=True)
    time.sleep(3600)
"""


def _start_agent(guest: Guest, status: Path) -> tuple[subprocess.Popen[str], int]:
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(guest.mountpoint), str(SAFE_FREEZE_WAIT), str(status)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the agent leads its own process group, as a service would
    )
    assert agent.stdout is not None
    line = agent.stdout.readline().split()
    assert line[:1] == ["frozen"], line
    return agent, int(line[1])


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited process waiting to be reaped (a zombie) is not."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def test_agent_sigkilled_while_frozen_watchdog_thaws(guest: Guest, tmp_path: Path) -> None:
    status = tmp_path / "watchdog.json"
    agent, watchdog_pid = _start_agent(guest, status)
    try:
        assert write_finishes(guest.mountpoint / "during", within=0.3) is None  # frozen
        assert os.getpgid(watchdog_pid) != os.getpgid(agent.pid)
        os.killpg(agent.pid, signal.SIGKILL)  # the agent's whole process group
        killed = time.monotonic()
        agent.wait(timeout=10)
        took = write_finishes(guest.mountpoint / "after", within=SAFE_FREEZE_WAIT + MARGIN)
        assert took is not None, "the guest file system stayed frozen after the agent was killed"
        assert time.monotonic() - killed <= SAFE_FREEZE_WAIT + MARGIN
        report = json.loads(status.read_text())
        assert report["reason"] == "agent-exited"
        assert report["thawed"] == {os.path.realpath(guest.mountpoint): "thawed"}
        deadline = time.monotonic() + 5
        while _alive(watchdog_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(watchdog_pid), "the watchdog must exit after thawing"
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()


def test_agent_hung_while_frozen_watchdog_thaws_at_the_deadline(guest: Guest, tmp_path: Path) -> None:
    status = tmp_path / "watchdog.json"
    started = time.monotonic()
    agent, _ = _start_agent(guest, status)
    try:
        os.killpg(agent.pid, signal.SIGSTOP)  # alive but making no progress
        took = write_finishes(guest.mountpoint / "after", within=SAFE_FREEZE_WAIT + MARGIN)
        assert took is not None, "the watchdog did not thaw at safe_freeze_wait_seconds"
        elapsed = time.monotonic() - started
        assert SAFE_FREEZE_WAIT - 0.5 <= elapsed <= SAFE_FREEZE_WAIT + MARGIN + 1.0
        assert json.loads(status.read_text())["reason"] == "deadline"
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        os.killpg(agent.pid, signal.SIGCONT)
        agent.wait()


def test_normal_thaw_tells_the_watchdog_to_leave_the_mounts_alone(guest: Guest, tmp_path: Path) -> None:
    from kluis.agent.extensions.snapshot import FreezeGuard

    status = tmp_path / "watchdog.json"
    with FreezeGuard([str(guest.mountpoint)], 30, status_path=str(status)) as guard:
        assert guard.watchdog is not None
        pid = guard.watchdog.pid
    assert not guard.window_exceeded and guard.elapsed < 5
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    # Someone else's later freeze is not undone by our watchdog.
    subprocess.run(["fsfreeze", "-f", str(guest.mountpoint)], check=True)
    try:
        time.sleep(0.2)
        assert write_finishes(guest.mountpoint / "theirs", within=0.3) is None
    finally:
        subprocess.run(["fsfreeze", "-u", str(guest.mountpoint)], check=True)

"""A VM's state from its real process: paused (SIGSTOP) and stopping (an unreaped exit) stop a backup.

The "VM process" is a real ``sleep`` whose pid is in the VM file's ``pid_file``:
``kill -STOP`` pauses it, ``kill -CONT`` resumes it. The stopping VM is a real zombie:
a Python parent forks a child that exits at once while the parent sleeps without
reaping it. The backup is run twice for real: through ``take_snapshot`` on the test
VM (loop-mounted ext4 on XFS), and as a disk backup job through a vault and an agent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kluis.agent.extensions.snapshot import ConfigMachine, Consistency, QuiesceConfig, take_snapshot
from kluis.agent.extensions.snapshot.vmconfig import process_state
from kluis.catalog import KluisError
from tests.agent.helpers import wait_for
from tests.disks.conftest import Site, site  # noqa: F401  (the vault + agent fixture)
from tests.extensions.helpers import Guest

ZOMBIE_PARENT = (
    "import os, sys, time\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os._exit(0)\n"
    "print(pid, flush=True)\n"
    "time.sleep(300)\n"
)


@pytest.fixture
def vm_process() -> Iterator[subprocess.Popen[bytes]]:
    """A real process standing in for the VM (``sleep 300``); always killed and reaped."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)


def _vm_file(path: Path, image: Path, pid_file: Path, name: str = "web-01") -> Path:
    path.write_text(
        f'[vm]\nname = "{name}"\nguest_agent = "local"\npid_file = "{pid_file}"\n\n'
        f'[[disks]]\nname = "root"\npath = "{image}"\nformat = "raw"\n'
    )
    return path


def _wait_state(machine: ConfigMachine, state: str) -> None:
    # A signal is delivered asynchronously: /proc shows the new state a moment later.
    wait_for(lambda: machine.state() == state, timeout=10, interval=0.02, what=f"VM state {state}")


def _snapshots_on_disk(image: Path) -> list[str]:
    d = image.parent / ".kluis-snapshots"
    return sorted(os.listdir(d)) if d.exists() else []


def test_state_follows_the_process(tmp_path: Path, vm_process: subprocess.Popen[bytes]) -> None:
    pid_file = tmp_path / "web-01.pid"
    machine = ConfigMachine(_vm_file(tmp_path / "web-01.toml", tmp_path / "root.img", pid_file))
    assert machine.state() == "shut off" and not machine.is_running()  # no pid file yet

    pid_file.write_text(f"{vm_process.pid}\n")
    assert machine.state() == "running" and machine.is_running()
    vm_process.send_signal(signal.SIGSTOP)
    _wait_state(machine, "paused")
    assert process_state(vm_process.pid) == "T"
    assert machine.is_running(), "a paused VM still holds its disks"
    vm_process.send_signal(signal.SIGCONT)
    _wait_state(machine, "running")

    vm_process.kill()
    vm_process.wait(timeout=10)
    assert machine.state() == "shut off", "the pid no longer exists once reaped"
    pid_file.write_text("not a pid\n")
    assert machine.state() == "shut off"


def test_exited_but_unreaped_vm_is_stopping(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", ZOMBIE_PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        pid_file = tmp_path / "web-01.pid"
        pid_file.write_text(str(child))
        machine = ConfigMachine(_vm_file(tmp_path / "web-01.toml", tmp_path / "root.img", pid_file))
        _wait_state(machine, "stopping")
        assert process_state(child) == "Z"
        with pytest.raises(KluisError) as exc:
            take_snapshot(machine, item="vm")
        assert exc.value.code == "VmStateTransitional"
        assert exc.value.params == {"vm": "web-01", "state": "stopping"}
        assert exc.value.message == "VM web-01 is stopping; a backup needs it running or shut off."
    finally:
        parent.kill()
        parent.wait(timeout=10)


def test_paused_vm_fails_the_snapshot_then_resumed_it_proceeds(
    guest: Guest, tmp_path: Path, vm_process: subprocess.Popen[bytes]
) -> None:
    pid_file = tmp_path / "web-01.pid"
    pid_file.write_text(str(vm_process.pid))
    machine = ConfigMachine(_vm_file(tmp_path / "web-01.toml", guest.image, pid_file))
    vm_process.send_signal(signal.SIGSTOP)
    _wait_state(machine, "paused")

    with pytest.raises(KluisError) as exc:
        take_snapshot(machine, item="vm", quiesce=QuiesceConfig(safe_freeze_wait_seconds=10))
    assert exc.value.code == "VmStateTransitional"
    assert exc.value.params == {"vm": "web-01", "state": "paused"}
    assert exc.value.entry.http_status == 409
    assert _snapshots_on_disk(guest.image) == [], "nothing was taken or left behind"
    assert process_state(vm_process.pid) == "T", "the check only reads the state"

    vm_process.send_signal(signal.SIGCONT)
    _wait_state(machine, "running")
    result = take_snapshot(machine, item="vm", quiesce=QuiesceConfig(safe_freeze_wait_seconds=10))
    try:
        # Running again: its file systems are frozen for the snapshot (no scripts: file-system).
        assert result.consistency is Consistency.FILE_SYSTEM and result.freeze_seconds > 0
        assert len(_snapshots_on_disk(guest.image)) == 1
    finally:
        result.release()


def test_disk_backup_job_of_a_paused_vm(site: Site, vm_process: subprocess.Popen[bytes]) -> None:  # noqa: F811
    """Through the vault and the agent: the job fails with the code, then succeeds once resumed."""
    pid_file = site.workdir / "vm-paused.pid"
    pid_file.write_text(str(vm_process.pid))
    vms = site.agent.config_dir / "vms"
    vms.mkdir(mode=0o700, exist_ok=True)
    machine = ConfigMachine(_vm_file(vms / "vm-paused.toml", site.guest.image, pid_file, name="vm-paused"))
    made = site.cli("protect", "disks", "vm-paused", "--policy", "vms", "--json")
    assert made.rc == 0, made.stdout + made.stderr
    item = made.json["id"]

    vm_process.send_signal(signal.SIGSTOP)
    _wait_state(machine, "paused")
    job = site.backup(item, timeout=120)
    assert job["status"] == "Failed", job
    assert job["error"]["code"] == "VmStateTransitional", job
    assert job["error"]["params"] == {"vm": "vm-paused", "state": "paused"}, job

    vm_process.send_signal(signal.SIGCONT)
    _wait_state(machine, "running")
    job = site.backup(item, timeout=120)
    assert job["status"] == "Completed", job
    assert job["result"]["stats"]["consistency"] == "file-system", job["result"]

"""Machines whose disks the extension snapshots, behind one small ``Machine`` protocol.

Two kinds exist now; a libvirt connector can come later behind the same protocol:

- ``HostMachine``: this machine's own disks (block devices or image files); the agent
  on it is also the one that quiesces.
- ``ConfigMachine``: a VM on this host described by a TOML file::

      [vm]
      name = "web-01"
      guest_agent = "local"    # how to quiesce the guest: "local" or "none"
      pid_file = "/run/vms/web-01.pid"   # optional: the VM's state is this process's state

      [[disks]]
      name = "root"
      path = "/var/lib/vms/web-01/root.img"
      format = "raw"           # "raw" or "qcow2"; detected when left out

  ``guest_agent = "local"`` means the guest's file systems are reachable from this
  host: the image is attached to a loop device and its file systems are mounted
  here, so quiescing freezes those mounts. ``"none"``: no guest agent, so the
  recovery point is crash-consistent at best (an error unless the quiesce
  configuration has ``continue_on_failure``). Without ``pid_file`` the VM counts as
  running while one of its images is attached to a loop device.

A machine's ``state()`` is one of ``VM_STATES``. For a ``ConfigMachine`` with a
``pid_file`` it comes from the process's state letter in ``/proc/PID/stat``: stopped
by a signal (``T``, ``t``) is "paused", exited but not yet reaped by its parent
(``Z``, ``X``) is "stopping", any other live process is "running", and no process is
"shut off". A libvirt connector would map ``virsh domstate`` onto the same words. A
disk backup needs "running" or "shut off" (``check_backup_state``): a paused guest
cannot be quiesced and a stopping one is about to change its disks' last writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from kluis.catalog import KluisError

from .mounts import loop_devices_backed_by, mounts_on_devices
from .providers.base import DiskRef, disk_format
from .quiesce import QuiesceConfig, QuiesceOutcome, quiesced

GUEST_AGENTS = ("local", "none")

RUNNING = "running"
SHUT_OFF = "shut off"
PAUSED = "paused"
STOPPING = "stopping"
VM_STATES = (RUNNING, SHUT_OFF, PAUSED, STOPPING)
# States a disk backup waits out: VmStateTransitional.
TRANSITIONAL = (PAUSED, STOPPING)


class Quiesce:
    """A quiesce in progress: ``thaw()`` ends it (idempotent); also a context manager."""

    def __init__(self, cm: contextlib.AbstractContextManager[QuiesceOutcome]) -> None:
        self._cm: contextlib.AbstractContextManager[QuiesceOutcome] | None = cm
        self.outcome = cm.__enter__()

    def thaw(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        """Thaw and run the post-script (once)."""
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(exc_type, exc, tb)

    def __enter__(self) -> Quiesce:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.thaw(exc_type, exc, tb)


@runtime_checkable
class Machine(Protocol):
    """What the extension needs from a machine or VM."""

    name: str

    def list_disks(self) -> list[DiskRef]:
        """The disks to snapshot, with their current paths."""

    def state(self) -> str:
        """One of ``VM_STATES``: running, shut off, paused or stopping."""

    def is_running(self) -> bool:
        """True unless the machine is shut off (a shut-off one needs no quiesce)."""

    def quiesce(self, config: QuiesceConfig, item: str = "") -> Quiesce:
        """Quiesce the guest's applications and file systems; thaw with ``Quiesce.thaw``."""

    def thaw(self) -> None:
        """Thaw the quiesce in progress, if any."""


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` from ``/proc/PID/stat``; None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "PID (COMM) S ...": the command name may itself hold spaces and parentheses.
    rest = stat.rpartition(")")[2].split()
    return rest[0] if rest else None


def state_of_process(letter: str | None) -> str:
    """A VM state from a process state letter (see the module docstring)."""
    if letter is None:
        return SHUT_OFF
    if letter in ("T", "t"):
        return PAUSED
    if letter in ("Z", "X"):
        return STOPPING
    return RUNNING


def check_backup_state(machine: Machine) -> str:
    """The machine's state; VmStateTransitional when a backup must wait for it to settle."""
    state = machine.state()
    if state in TRANSITIONAL:
        raise KluisError("VmStateTransitional", vm=machine.name, state=state)
    return state


def local_mounts(disks: list[DiskRef]) -> list[str]:
    """Writable mount points of file systems on these disks, visible on this host."""
    devices: list[str] = []
    for d in disks:
        if d.format == "block":
            devices.append(d.path)
        else:
            devices.extend(loop_devices_backed_by(d.path))
    return [m.mountpoint for m in mounts_on_devices(devices)] if devices else []


class _Quiescing:
    """Shared ``quiesce``/``thaw`` for machines whose file systems are mounted here."""

    name: str
    _current: Quiesce | None = None
    watchdog_status: str | None = None

    def list_disks(self) -> list[DiskRef]:
        raise NotImplementedError

    def _mounts(self) -> list[str]:
        return local_mounts(self.list_disks())

    def quiesce(self, config: QuiesceConfig, item: str = "") -> Quiesce:
        """Pre-script, freeze (with watchdog); ``thaw()`` thaws and runs the post-script."""
        q = Quiesce(
            quiesced(config, self._mounts(), item=item or self.name, watchdog_status=self.watchdog_status)
        )
        self._current = q
        return q

    def thaw(self) -> None:
        """Thaw the quiesce in progress."""
        q, self._current = self._current, None
        if q is not None:
            q.thaw()


class HostMachine(_Quiescing):
    """This machine's own disks; the agent here quiesces them."""

    def __init__(self, name: str, disks: list[DiskRef]) -> None:
        self.name = name
        self._disks = list(disks)

    def list_disks(self) -> list[DiskRef]:
        """The configured disks; a vanished one is ProtectedMachineNotFound."""
        for d in self._disks:
            if not os.path.exists(d.path):
                raise KluisError("ProtectedMachineNotFound", kind="disk", name=d.path, item=self.name)
        return list(self._disks)

    def state(self) -> str:
        """The machine the agent runs on is running."""
        return RUNNING

    def is_running(self) -> bool:
        """The machine the agent runs on is running."""
        return True


class ConfigMachine(_Quiescing):
    """A VM on this host described by a TOML file (see the module docstring)."""

    def __init__(self, config_path: str | os.PathLike[str]) -> None:
        self.path = Path(config_path)
        data = self._load()
        vm = data["vm"]
        self.name: str = vm["name"]
        self.guest_agent: str = vm.get("guest_agent", "none")
        self.pid_file: str | None = vm.get("pid_file")
        self._disks: list[dict[str, Any]] = data["disks"]
        self._state_path = self.path.with_name(self.path.name + ".active.json")

    def _bad(self, reason: str) -> KluisError:
        return KluisError("VmConfigInvalid", path=str(self.path), reason=reason)

    def _load(self) -> dict[str, Any]:
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise self._bad("the file does not exist") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise self._bad(str(exc)) from exc
        vm = data.get("vm")
        if not isinstance(vm, dict) or not isinstance(vm.get("name"), str) or not vm["name"]:
            raise self._bad('[vm] needs name = "..."')
        if vm.get("guest_agent", "none") not in GUEST_AGENTS:
            raise self._bad(f"vm.guest_agent must be one of {', '.join(GUEST_AGENTS)}")
        if "pid_file" in vm and not isinstance(vm["pid_file"], str):
            raise self._bad("vm.pid_file must be a path")
        disks = data.get("disks")
        if not isinstance(disks, list) or not disks:
            raise self._bad("at least one [[disks]] entry with name and path is needed")
        names: set[str] = set()
        for d in disks:
            if (
                not isinstance(d, dict)
                or not isinstance(d.get("name"), str)
                or not isinstance(d.get("path"), str)
            ):
                raise self._bad("each [[disks]] entry needs name and path")
            if d.get("format", "raw") not in ("raw", "qcow2"):
                raise self._bad(f"disk {d['name']}: format must be raw or qcow2")
            if d["name"] in names:
                raise self._bad(f"disk name {d['name']} is used twice")
            names.add(d["name"])
        return data

    def _active_paths(self) -> dict[str, str]:
        try:
            data = json.loads(self._state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def list_disks(self) -> list[DiskRef]:
        """The VM's disks at their active paths; a vanished image is ProtectedMachineNotFound."""
        active = self._active_paths()
        out: list[DiskRef] = []
        for d in self._disks:
            path = active.get(d["name"], d["path"])
            if not os.path.exists(path):
                raise KluisError("ProtectedMachineNotFound", kind="disk image", name=path, item=self.name)
            out.append(DiskRef(d["name"], path, d.get("format") or disk_format(path)))
        return out

    def switch_disk(self, name: str, path: str) -> None:
        """Record that disk ``name`` is now the image ``path`` (for qcow2 overlays)."""
        active = self._active_paths()
        configured = next(d["path"] for d in self._disks if d["name"] == name)
        if os.path.realpath(path) == os.path.realpath(configured):
            active.pop(name, None)
        else:
            active[name] = path
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(active))
        os.replace(tmp, self._state_path)

    def state(self) -> str:
        """From the ``pid_file`` process when set, else: running while an image is on a loop device."""
        if self.pid_file:
            try:
                pid = int(Path(self.pid_file).read_text().strip())
            except (OSError, ValueError):
                return SHUT_OFF  # no pid file (or an unreadable one): the VM is not started
            return state_of_process(process_state(pid) if pid > 0 else None)
        return RUNNING if any(loop_devices_backed_by(d.path) for d in self.list_disks()) else SHUT_OFF

    def is_running(self) -> bool:
        """True unless shut off: a paused or stopping VM still holds its disks."""
        return self.state() != SHUT_OFF

    def quiesce(self, config: QuiesceConfig, item: str = "") -> Quiesce:
        """Quiesce through the guest agent; without one, crash-consistent or an error."""
        if self.guest_agent == "none" and self.is_running():
            err = KluisError(
                "VmGuestAgentUnavailable", vm=self.name, address="guest_agent = none", reason="no guest agent"
            )
            if not config.continue_on_failure:
                raise err
            no_freeze = QuiesceConfig(
                freeze=False,
                continue_on_failure=True,
                safe_freeze_wait_seconds=config.safe_freeze_wait_seconds,
            )
            q = Quiesce(quiesced(no_freeze, [], item=item or self.name))
            q.outcome.warnings.append(err)
            self._current = q
            return q
        if not self.is_running():
            # A stopped VM's disks do not change; nothing in it can be quiesced.
            q = Quiesce(quiesced(QuiesceConfig(freeze=False), [], item=item or self.name))
            self._current = q
            return q
        return super().quiesce(config, item)

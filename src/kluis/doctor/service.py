"""The machine and its agent service: reboot pending, the daemon running, heartbeating and current.

Whether the daemon runs is read from the kernel, not from a pid file: the daemon
holds an ``flock`` on ``agent.lock`` in its scratch folder for its whole life, and
``/proc/locks`` lists who holds it. Nothing here takes that lock (a doctor holding
it for a moment could make a starting daemon fail with AgentAlreadyRunning).

The fix (``--fix``) restarts the agent the way it is installed: ``systemctl restart
kluis-agent`` where systemd runs the unit, otherwise it stops the running daemon
(SIGTERM, as systemd would) and starts ``kluis agent run --config-dir DIR`` in the
background, which is what the unit runs (deploy/kluis-agent.service).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from kluis import __version__
from kluis.catalog import KluisError
from kluis.doctor.context import MachineContext
from kluis.doctor.framework import Check, Fix, Result, catalog_checks, failed, passed, warned

UNIT = "kluis-agent"
DEFAULT_HEARTBEAT = 60.0
MISSED_HEARTBEATS = 3  # as many as the vault allows before it marks the agent unresponsive
# Short test intervals would make a busy machine's slightly late heartbeat look like a hang.
MIN_SILENCE = 10.0
STOP_WAIT = 35.0  # the daemon gives running jobs 20 s to stop
START_WAIT = 30.0
REBOOT_MARKERS = (Path("/run/reboot-required"), Path("/var/run/reboot-required"))


# -- helpers other modules use -----------------------------------------------------------------


def lock_holder(lock: Path) -> int | None:
    """The pid holding an ``flock`` on ``lock`` according to ``/proc/locks`` (None when nobody does)."""
    try:
        st = os.stat(lock)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    fallback: int | None = None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1477 fe:00:2283767 0 EOF"; waiters have "->" after the number.
        if len(fields) < 6 or fields[1] == "->" or fields[1] != "FLOCK":
            continue
        try:
            maj, mnr, ino = fields[5].split(":")
            if int(ino) != st.st_ino:
                continue
            pid = int(fields[4])
        except ValueError:
            continue
        if f"{maj}:{mnr}" == dev:
            return pid
        # btrfs subvolumes show another device number in stat() than in /proc/locks.
        fallback = pid
    return fallback


def daemon_pid(ctx: MachineContext) -> int | None:
    """The running daemon's pid, when one holds the scratch folder's lock."""
    pid = lock_holder(ctx.layout.lock)
    if pid is not None and Path(f"/proc/{pid}").exists():
        return pid
    return None


def systemd_unit() -> bool:
    """Whether systemd runs this machine and knows the kluis-agent unit."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return False
    proc = subprocess.run(
        ["systemctl", "list-unit-files", f"{UNIT}.service", "--no-legend"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.returncode == 0 and UNIT in proc.stdout


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120, check=False)


# -- the fix --------------------------------------------------------------------------------------


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.1)
    return False


def restart_agent(ctx: MachineContext) -> str:
    """Restart the agent (systemctl, or stop and start the daemon); what was done."""
    if systemd_unit():
        proc = _systemctl("restart", UNIT)
        if proc.returncode != 0:
            raise KluisError(
                "DoctorCheckFailed",
                check="agent-service (--fix)",
                reason=f"systemctl restart {UNIT} failed: {(proc.stderr or proc.stdout).strip()}",
            )
        return f"restarted the {UNIT} service with `systemctl restart {UNIT}`"
    done: list[str] = []
    old = daemon_pid(ctx)
    if old is not None:
        os.kill(old, signal.SIGTERM)
        if not _wait(lambda: daemon_pid(ctx) is None, STOP_WAIT):
            raise KluisError(
                "DoctorCheckFailed",
                check="agent-service (--fix)",
                reason=f"the running agent (pid {old}) did not stop within {STOP_WAIT:.0f} s of SIGTERM",
            )
        done.append(f"stopped the agent (pid {old})")
    log_path = ctx.layout.root / "logs" / "agent.log"
    argv = [sys.executable, "-m", "kluis", "agent", "run", "--config-dir", str(ctx.config_dir)]
    started = time.time()
    try:
        log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    except OSError:
        log_path, log_file = Path(os.devnull), open(os.devnull, "wb")  # noqa: SIM115
    with log_file:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,  # it must outlive this command
        )

    def up() -> bool:
        if child.poll() is not None:
            return True
        state = ctx.state()
        heard = max(
            float(state.get("last_heartbeat_at") or 0), float(state.get("last_heartbeat_error_at") or 0)
        )
        return daemon_pid(ctx) == child.pid and heard >= started

    _wait(up, START_WAIT)
    if child.poll() is not None:
        raise KluisError(
            "DoctorCheckFailed",
            check="agent-service (--fix)",
            reason=f"`{' '.join(argv[2:])}` exited with {child.returncode}; see {log_path}",
        )
    done.append(
        f"started it again with `kluis agent run --config-dir {ctx.config_dir}`"
        f" (pid {child.pid}, log {log_path})"
    )
    return "; ".join(done)


def restart_fix(ctx: MachineContext) -> Fix:
    """The safe fix that restarts the agent."""
    return Fix("restart-agent", "restart the agent", lambda: restart_agent(ctx))


def _restart_command() -> str:
    return f"systemctl restart {UNIT}" if systemd_unit() else "kluis doctor --fix (or `kluis agent run &`)"


# -- checks ---------------------------------------------------------------------------------------


def check_machine_health(ctx: MachineContext) -> Result:
    """Step 1 of the seeds: a machine waiting for a reboot after updates."""
    for marker in REBOOT_MARKERS:
        if marker.exists():
            try:
                packages = (marker.parent / (marker.name + ".pkgs")).read_text().split()
            except OSError:
                packages = []
            reason = f"{marker} exists" + (f"; updated: {', '.join(packages[:5])}" if packages else "")
            name = ctx.cfg.hostname if ctx.config_error is None else ctx.current_hostname
            return warned(
                KluisError("MachineRebootPending", machine=name, reason=reason), "reboot the machine"
            )
    return passed("no reboot is pending")


def check_agent_service(ctx: MachineContext) -> Result:
    """The daemon holds its scratch folder's lock; the unit is enabled where systemd runs it."""
    pid = daemon_pid(ctx)
    if pid is None:
        state = ctx.state()
        reason = f"nobody holds the lock {ctx.layout.lock}"
        if state.get("stopped_at"):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(state["stopped_at"])))
            reason += f"; the last agent stopped at {when}"
        elif state.get("pid"):
            reason += f"; the last agent (pid {state['pid']}) ended without stopping cleanly"
        error = KluisError("AgentNotRunning", path=str(ctx.cfg.scratch), machine=ctx.machine, reason=reason)
        return failed(error, _restart_command(), auto_fix=restart_fix(ctx))
    if systemd_unit():
        enabled = _systemctl("is-enabled", UNIT).stdout.strip()
        if enabled != "enabled":
            return warned(
                KluisError("AgentServiceNotEnabled", machine=ctx.machine),
                f"systemctl enable {UNIT}",
                details={"pid": pid, "unit_state": enabled},
            )
    return passed(f"the agent runs (pid {pid})", pid=pid)


def check_agent_heartbeat(ctx: MachineContext) -> Result:
    """The running daemon reached the vault recently (its last heartbeat, from its status file)."""
    state = ctx.state()
    interval = float(state.get("heartbeat_interval") or ctx.cfg.heartbeat_interval or DEFAULT_HEARTBEAT)
    last = float(state.get("last_heartbeat_at") or 0)
    last_error_at = float(state.get("last_heartbeat_error_at") or 0)
    error = state.get("last_heartbeat_error")
    if isinstance(error, dict) and error.get("code") and last_error_at > last:
        try:
            err = KluisError.from_dict(error)
        except LookupError:
            err = KluisError("AgentUnresponsive", machine=ctx.machine, missed="?")
        fix = err.actions[0] if err.actions else _restart_command()
        return failed(err, fix, summary=f"the agent's last heartbeat failed: {err.code}: {err.message}")
    if not last:
        started = float(state.get("started_at") or 0)
        if started and ctx.now - started < max(MISSED_HEARTBEATS * interval, MIN_SILENCE):
            return passed(f"the agent started {ctx.now - started:.0f} s ago; its first heartbeat is due")
        missed = "all"
    else:
        silence = ctx.now - last
        if silence <= max(MISSED_HEARTBEATS * interval, MIN_SILENCE):
            return passed(f"last heartbeat {silence:.0f} s ago (every {interval:.0f} s)", seconds_ago=silence)
        missed = str(int(silence // interval))
    return failed(
        KluisError("AgentUnresponsive", machine=ctx.machine, missed=missed),
        _restart_command(),
        auto_fix=restart_fix(ctx),
    )


def check_agent_version(ctx: MachineContext) -> Result:
    """The running daemon is the installed version, and the vault does not know a newer one."""
    state = ctx.state()
    running = str(state.get("agent_version") or "")
    if running and running != __version__:
        return warned(
            KluisError("AgentRestartNeeded", machine=ctx.machine, running=running, installed=__version__),
            _restart_command(),
            auto_fix=restart_fix(ctx),
        )
    latest = state.get("latest_agent_version")
    if state.get("agent_outdated") and latest:
        return warned(
            KluisError("AgentOutdated", machine=ctx.machine, version=__version__, minimum=latest),
            "update the kluis package with your package manager, then " + _restart_command(),
        )
    known = f"; the vault's latest is {latest}" if latest else ""
    return passed(f"version {__version__}{known}", version=__version__, latest=latest)


CHECKS: list[Check[MachineContext]] = [
    Check("machine-health", "Machine health", check_machine_health, ("MachineRebootPending",)),
    Check(
        "agent-service",
        "Agent service running",
        check_agent_service,
        ("AgentNotRunning", "AgentServiceNotEnabled"),
    ),
    Check(
        "agent-heartbeat",
        "Agent heartbeat",
        check_agent_heartbeat,
        ("AgentUnresponsive",),
        requires=("agent-service",),
    ),
    Check(
        "agent-version",
        "Agent version current",
        check_agent_version,
        ("AgentRestartNeeded", "AgentOutdated"),
        requires=("agent-service",),
    ),
]
CATALOG_CHECKS = catalog_checks(CHECKS)

"""Agent-side conditions ``kluis doctor`` finds, each made for real on a running agent.

One vault (it knows of a newer agent release than the installed one) and one
registered agent whose daemon runs for the whole module, with its bandwidth held
low so a backup stays in progress long enough to look at:

- AgentOutdated: the vault's ``[agents] latest_version`` is newer than this agent;
  the daemon learns it from its heartbeat answers and the doctor reports it.
- JobRunningLong: a backup in progress seen by a doctor whose clock reads 25 hours
  later, as if the same backup had run since yesterday.
- ExtensionBlockedBySecurityPolicy: a Landlock policy that denies running programs
  from the agent's extension directory (its mount allows them; the LSM says no).
- AgentServiceNotEnabled: the kluis-agent unit installed but not enabled, on a
  machine that systemd runs (skipped where it does not).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kluis import __version__
from kluis.doctor.jobs import LONG_HOURS
from tests.agent.helpers import FINAL, AgentProc, VaultServer, make_tree, wait_for
from tests.conditions.launchers import kluis_with_clock_ahead, landlock_abi, landlock_denying_exec
from tests.doctor.helpers import Report, doctor_env, run_doctor, stop_daemon, wait_heartbeat

NEWER = "99.0.0"
VAULT_OVERRIDES = {"latest_agent_version": NEWER}
UNIT = "kluis-agent"
RUNTIME_UNIT_DIR = Path("/run/systemd/system")


@pytest.fixture(scope="module")
def agent(vault: VaultServer, workdir: Path) -> Iterator[AgentProc]:
    """A registered agent with its daemon running; backups crawl at 200 kB/s."""
    proc = AgentProc(root=workdir / "host-1", hostname="cond-host-1", scratch=workdir / "host-1" / "scratch")
    registered = proc.register(vault.credentials_file(workdir / "creds"))
    assert registered.rc == 0, registered.stdout + registered.stderr
    proc.tune(heartbeat_interval=1, poll_wait=5, work_hours_limit=200_000, off_hours_limit=200_000)
    proc.extra_env["KLUIS_PACK_SIZE"] = str(256 * 1024)  # small packs: a cancel is honoured soon
    since = time.time()
    proc.start()
    try:
        wait_heartbeat(proc, since)
        yield proc
    finally:
        stop_daemon(proc)


def _doctor_via(agent: AgentProc, prefix: list[str], timeout: float = 120) -> Report:
    """``kluis doctor --json`` for the agent, started through ``prefix`` (a launcher)."""
    argv = [*prefix, "doctor", "--json", "--config-dir", str(agent.config_dir)]
    proc = subprocess.run(
        argv, env=doctor_env(agent), capture_output=True, text=True, timeout=timeout, check=False
    )
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"doctor printed no JSON (rc {proc.returncode}):\n{proc.stderr}") from None
    return Report(proc.returncode, data, proc.stderr)


def _cancel(vault: VaultServer, job_id: str) -> None:
    """Cancel a job unless it has ended already; wait for its end."""
    if vault.job(job_id)["status"] not in FINAL:
        vault.request("POST", f"/api/v1/jobs/{job_id}/cancel", None)
    vault.wait_job(job_id, timeout=60)


def test_vault_knows_a_newer_agent_release(agent: AgentProc) -> None:
    # The daemon keeps what the vault said in its status file; the doctor reads it from there.
    wait_for(lambda: agent.state().get("agent_outdated") is True, what="the vault to call the agent outdated")
    assert agent.state()["latest_agent_version"] == NEWER
    report = run_doctor(agent)
    check = report.check("agent-version")
    assert check["verdict"] == "warn", check
    assert check["error"]["code"] == "AgentOutdated"
    assert check["error"]["params"] == {"machine": agent.hostname, "version": __version__, "minimum": NEWER}
    assert "update the kluis package" in check["fix"]
    assert report.rc == 0, report.not_passing()  # a warning, not a failure


def test_backup_running_for_more_than_a_day(agent: AgentProc, vault: VaultServer, workdir: Path) -> None:
    data = workdir / "slow-data"
    make_tree(data, files=16, size=700 * 1024, seed=11)
    item = vault.files_item(agent.machine_id(), vault.policy()["id"], [str(data)], "slow-files")
    job = vault.backup(item["id"])
    try:
        wait_for(lambda: job["id"] in (agent.state().get("running") or {}), what="the backup to start")
        now = run_doctor(agent)
        later = _doctor_via(agent, kluis_with_clock_ahead((LONG_HOURS + 1) * 3600))
    finally:
        _cancel(vault, job["id"])
    # Just started: an ordinary backup in progress.
    assert now.code("jobs-in-progress") == "UserErrorBackupOperationInProgress", now.check("jobs-in-progress")
    check = later.check("jobs-in-progress")
    assert check["verdict"] == "warn", check
    assert check["error"]["code"] == "JobRunningLong"
    params = check["error"]["params"]
    assert params["job"] == job["id"] and params["kind"] == "Backup" and params["limit"] == LONG_HOURS
    assert LONG_HOURS + 1 <= float(params["hours"]) < LONG_HOURS + 1.5, params
    assert f"kluis jobs cancel {job['id']}" in check["fix"]


def test_security_policy_denies_programs_in_the_extension_directory(agent: AgentProc) -> None:
    if landlock_abi() == 0:
        pytest.skip("Landlock is not available in this kernel (no security policy to deny programs)")
    extensions = agent.scratch / "extensions"
    extensions.mkdir(mode=0o755, exist_ok=True)
    report = _doctor_via(agent, [*landlock_denying_exec(extensions), sys.executable, "-m", "kluis"])
    check = report.check("extension-dir")
    assert check["verdict"] == "fail", check
    assert check["error"]["code"] == "ExtensionBlockedBySecurityPolicy"
    params = check["error"]["params"]
    assert Path(params["path"]).parent == extensions and Path(params["path"]).name.startswith(".exec-probe-")
    assert params["reason"] == "Permission denied"
    assert "security policy" in check["fix"]
    assert not list(extensions.glob(".exec-probe-*"))  # the probe is cleaned up
    # Without the policy the same directory runs programs.
    assert run_doctor(agent).verdict("extension-dir") == "pass"


def _systemd_runs_this_machine() -> bool:
    return RUNTIME_UNIT_DIR.is_dir() and shutil.which("systemctl") is not None


def test_agent_unit_installed_but_not_enabled(agent: AgentProc) -> None:
    if not _systemd_runs_this_machine():
        pytest.skip("systemd does not run this machine: there is no unit to enable")
    known = subprocess.run(
        ["systemctl", "list-unit-files", f"{UNIT}.service", "--no-legend"],
        capture_output=True,
        text=True,
        check=False,
    )
    if UNIT in known.stdout:
        pytest.skip(f"a {UNIT} unit is installed on this machine already; the test would change it")
    unit = RUNTIME_UNIT_DIR / f"{UNIT}.service"
    unit.write_text(
        "[Unit]\nDescription=Kluis backup agent (test)\n\n"
        f"[Service]\nExecStart={shutil.which('true') or '/bin/true'}\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    try:
        subprocess.run(["systemctl", "daemon-reload"], check=True, capture_output=True)
        report = run_doctor(agent)
    finally:
        unit.unlink()
        subprocess.run(["systemctl", "daemon-reload"], check=False, capture_output=True)
    check = report.check("agent-service")
    assert check["verdict"] == "warn", check
    assert check["error"]["code"] == "AgentServiceNotEnabled"
    assert check["error"]["params"] == {"machine": agent.hostname}
    assert check["details"]["unit_state"] != "enabled"
    assert check["fix"] == f"systemctl enable {UNIT}"

"""``kluis doctor`` on a machine: all-pass when healthy, then each broken condition made for real.

The module shares one vault and one registered agent (daemon running, snapshot
extension installed). Each test breaks one thing, asserts the doctor's verdict and
catalog code, and puts it back in ``finally``. Conditions that need their own
machine (a full scratch file system, a slow backup in progress) register one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kluis.agent.extensions.snapshot import (
    EXTENSION_NAME,
    DiskRef,
    ExtensionManager,
    RestorePointCollection,
    build_snapshot_extension_package,
    lock_collection,
    unlock_collection,
)
from kluis.agent.extensions.snapshot.instant import DAY, MAX_POINTS
from kluis.agent.extensions.snapshot.providers import ReflinkProvider, new_snapshot_id
from kluis.doctor.service import MIN_SILENCE
from tests.agent.helpers import AgentProc, VaultServer, fill, kluis, loop_filesystem, make_tree, wait_for
from tests.agent.proxy import TestProxy
from tests.doctor.helpers import (
    DateShiftProxy,
    daemon_of,
    doctor_env,
    edit_config,
    restore_config,
    run_doctor,
    stop_daemon,
    wait_heartbeat,
)
from tests.extensions.helpers import Mounts, run

# Skips a healthy machine may show: capabilities this kernel lacks, with the reason.
KERNEL_SKIPS = {"snapshot-lvm": "no device-mapper in this kernel"}


@dataclass
class Machine:
    """The module's registered machine."""

    vault: VaultServer
    agent: AgentProc
    root: Path
    creds: Path

    @property
    def extensions(self) -> Path:
        """Its extension directory (where the agent installs them)."""
        return self.agent.scratch / "extensions"

    @property
    def points(self) -> Path:
        """Its restore point collections (where the agent keeps them)."""
        return self.agent.scratch / "instant-points"


def install_extension(directory: Path, machine: str) -> ExtensionManager:
    """Install the snapshot extension as the agent does: the vault's package, checked and loaded."""
    manager = ExtensionManager(directory, machine=machine)
    with tempfile.TemporaryDirectory() as tmp:
        path, sha256, version = build_snapshot_extension_package(tmp)
        package = path.read_bytes()
    state = manager.install(EXTENSION_NAME, version, sha256, lambda: package)
    assert state.state == "succeeded"
    return manager


def register(vault: VaultServer, workdir: Path, name: str, scratch: Path | None = None) -> AgentProc:
    """A registered agent (no daemon yet), heartbeating every second once started."""
    root = workdir / name
    agent = AgentProc(root=root, hostname=name, scratch=scratch or root / "scratch")
    result = agent.register(vault.credentials_file(workdir / "creds"))
    assert result.rc == 0, result.stdout + result.stderr
    agent.tune(heartbeat_interval=1, poll_wait=5)
    return agent


@pytest.fixture(scope="module")
def machine(vault: VaultServer, workdir: Path) -> Iterator[Machine]:
    agent = register(vault, workdir, "doc-host-1")
    install_extension(agent.scratch / "extensions", agent.hostname)
    agent.start()
    try:
        yield Machine(vault, agent, agent.root, workdir / "creds")
    finally:
        stop_daemon(agent)


def test_healthy_machine_passes_every_check(machine: Machine) -> None:
    report = run_doctor(machine.agent)
    assert report.rc == 0, report.not_passing()
    problems = {}
    for check in report.data["checks"]:
        if check["verdict"] == "pass":
            continue
        reason = KERNEL_SKIPS.get(check["id"])
        if check["verdict"] == "skip" and reason and reason in check["summary"]:
            continue
        problems[check["id"]] = f"{check['verdict']}: {check['summary']}"
    assert not problems
    assert report.check("extension-handlers")["summary"].startswith("installed and intact: snapshot")
    assert report.data["ok"] is True and report.data["counts"]["fail"] == 0


def test_human_output_lists_checks_then_failures_with_their_fix(machine: Machine) -> None:
    agent = machine.agent
    before = edit_config(agent, extensions={"enable": False})
    try:
        result = kluis("doctor", "--config-dir", str(agent.config_dir), env=doctor_env(agent))
    finally:
        restore_config(agent, before)
    assert result.rc == 1
    table, _, details = result.stdout.partition("Agent configuration: AgentConfigOptionInvalid")
    details = " ".join(details.split())  # rich wraps long lines
    assert "Vault reachable: TCP" in table and "FAIL" in table and "PASS" in table
    assert "Likely causes:" in details and "What to do:" in details
    assert "Fix: set `enable = true` under `[extensions]`" in details
    assert "Some checks failed" in details


def test_extensions_switched_off_in_the_agent_config(machine: Machine) -> None:
    agent = machine.agent
    before = edit_config(agent, extensions={"enable": False})
    try:
        report = run_doctor(agent)
    finally:
        restore_config(agent, before)
    assert report.rc == 1
    check = report.check("agent-config")
    assert check["verdict"] == "fail"
    assert check["error"]["code"] == "AgentConfigOptionInvalid"
    assert check["error"]["params"] == {
        "option": "extensions.enable",
        "config": str(agent.config_file),
        "value": "false",
        "expected": "true",
    }
    assert "`enable = true` under `[extensions]`" in check["fix"]
    assert set(report.not_passing()) <= {"agent-config", *KERNEL_SKIPS}


def test_kek_file_deleted_then_unlocked_again(machine: Machine) -> None:
    agent = machine.agent
    kek = agent.scratch / "kluis.kek"
    kept = kek.read_bytes()
    kek.unlink()
    try:
        report = run_doctor(agent)
        assert report.rc == 1
        assert report.verdict("kek-file") == "fail" and report.code("kek-file") == "34506"
        assert report.verdict("kek-vault") == "skip"
        fix = report.check("kek-file")["fix"]
        assert fix.startswith(f"kluis agent unlock --config-dir {agent.config_dir}")
        # The fix it names works: the passphrase recreates the KEK file.
        unlocked = agent.cli("unlock", "--passphrase-file", str(agent.root / "passphrase"))
        assert unlocked.rc == 0, unlocked.stdout + unlocked.stderr
        again = run_doctor(agent)
        assert again.verdict("kek-file") == "pass" and again.verdict("kek-vault") == "pass"
    finally:
        if not kek.exists():
            kek.write_bytes(kept)
            kek.chmod(0o600)


def test_kek_of_another_key_set_does_not_match_the_vault(machine: Machine, workdir: Path) -> None:
    """A KEK file copied from another machine: the fingerprint check and the vault both refuse it."""
    agent = machine.agent
    other = register(machine.vault, workdir, "doc-host-other")
    kek = agent.scratch / "kluis.kek"
    kept = kek.read_bytes()
    kek.write_bytes((other.scratch / "kluis.kek").read_bytes())
    try:
        report = run_doctor(agent)
    finally:
        kek.write_bytes(kept)
    assert report.code("kek-file") == "34506"
    assert "belongs to key set" in report.check("kek-file")["error"]["detail"]


def test_machine_token_refused_and_host_name_changed(machine: Machine) -> None:
    agent = machine.agent
    doc = edit_config(agent)
    broken = {**doc["machine"], "token": "kluis_m_" + "0" * 40}
    edit_config(agent, machine=broken)
    try:
        report = run_doctor(agent)
    finally:
        restore_config(agent, doc)
    assert report.verdict("vault-http") == "pass"
    assert report.verdict("vault-auth") == "fail" and report.code("vault-auth") == "AuthTokenInvalid"
    assert report.verdict("kek-vault") == "skip"
    assert "kluis agent register" in report.check("vault-auth")["fix"]

    env = doctor_env(agent)
    env["KLUIS_AGENT_HOSTNAME"] = "renamed-host"
    renamed = kluis("doctor", "--json", "--config-dir", str(agent.config_dir), env=env)
    check = next(c for c in renamed.json["checks"] if c["id"] == "registration")
    assert check["verdict"] == "fail" and check["error"]["code"] == "230006"
    assert check["error"]["params"] == {"registered": agent.hostname, "current": "renamed-host"}
    assert check["fix"].startswith(f"hostnamectl set-hostname {agent.hostname}")


def test_proxy_asking_for_authentication(machine: Machine) -> None:
    agent = machine.agent
    doc = edit_config(agent)
    with TestProxy() as proxy:
        edit_config(agent, agent={**doc["agent"], "proxy": proxy.url})
        try:
            report = run_doctor(agent)
        finally:
            restore_config(agent, doc)
        assert proxy.seen, "the doctor went through the proxy"
    assert report.verdict("vault-dns") == "pass" and report.verdict("vault-tcp") == "pass"
    assert report.verdict("vault-proxy") == "fail"
    assert report.code("vault-proxy") == "ProxyAuthenticationRequired"
    assert "kluis agent config set proxy http://USER:PASSWORD@HOST:PORT" in report.check("vault-proxy")["fix"]
    assert report.verdict("vault-tls") == "skip" and report.verdict("vault-http") == "skip"


def test_clock_skew_against_the_vault(machine: Machine) -> None:
    """The vault's Date header moved an hour ahead by a proxy of the test's own: our clock is behind."""
    agent = machine.agent
    doc = edit_config(agent)
    with DateShiftProxy(machine.vault.port, shift=3600) as proxy:
        edit_config(agent, vault={**doc["vault"], "url": proxy.url})
        try:
            report = run_doctor(agent)
        finally:
            restore_config(agent, doc)
        assert proxy.rewritten > 0
    assert report.verdict("vault-http") == "pass" and report.verdict("vault-auth") == "pass"
    check = report.check("clock-skew")
    assert check["verdict"] == "fail" and check["error"]["code"] == "ClockSkew", check
    assert 3595 <= -int(check["error"]["params"]["offset"]) <= 3605
    assert check["error"]["params"]["limit"] == 300
    assert "timedatectl set-ntp true" in check["fix"]
    # A small skew within the limit is only a warning.
    with DateShiftProxy(machine.vault.port, shift=-120) as proxy:
        edit_config(agent, vault={**doc["vault"], "url": proxy.url})
        try:
            small = run_doctor(agent)
        finally:
            restore_config(agent, doc)
    assert small.verdict("clock-skew") == "warn" and small.code("clock-skew") == "ClockSkew"


def test_extension_directory_mounted_noexec(machine: Machine) -> None:
    """A noexec tmpfs mounted over the agent's extension directory (hiding the installed one)."""
    agent = machine.agent
    target = machine.extensions
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,noexec", "tmpfs", str(target)], check=True)
    try:
        report = run_doctor(agent)
    finally:
        subprocess.run(["umount", str(target)], check=False)
    check = report.check("extension-dir")
    assert check["verdict"] == "fail" and check["error"]["code"] == "ExtensionDirNoexec"
    assert check["error"]["params"] == {"path": str(target)}
    assert f"mount -o remount,exec {target}" in check["fix"]
    # The installed extension is back once the mount is gone.
    assert ExtensionManager(target).verify(EXTENSION_NAME) is None


def test_damaged_extension_is_reinstalled_by_fix(machine: Machine) -> None:
    agent = machine.agent
    manager = ExtensionManager(machine.extensions, machine=agent.hostname)
    installed = manager.installed_path(EXTENSION_NAME)
    assert installed is not None
    target = installed / "freeze.py"
    target.write_bytes(target.read_bytes() + b"\n# changed on disk\n")
    report = run_doctor(agent)
    check = report.check("extension-handlers")
    assert check["verdict"] == "fail" and check["error"]["code"] == "ExtensionHandlerFailed"
    assert "freeze.py does not match its checksum" in check["error"]["params"]["reason"]
    assert check["auto_fix"] == "reinstall snapshot"

    fixed = run_doctor(agent, "--fix")
    assert [(f["fix"], f["ok"]) for f in fixed.data["fixes"]] == [("reinstall-extensions", True)]
    assert "reinstalled snapshot" in fixed.data["fixes"][0]["message"]
    assert "from the vault" in fixed.data["fixes"][0]["message"]
    assert fixed.verdict("extension-handlers") == "pass"
    assert manager.verify(EXTENSION_NAME) is None
    assert b"changed on disk" not in (manager.installed_path(EXTENSION_NAME) / "freeze.py").read_bytes()


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """An XFS file system with reflink on a loop device: where the instant points' snapshots live."""
    mounts = Mounts()
    image = tmp_path / "xfs.img"
    with open(image, "wb") as fh:
        fh.truncate(320 * 1024 * 1024)
    try:
        run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
        yield mounts.mount(mounts.loop(image), tmp_path / "xfs")
    finally:
        mounts.close()


def test_restore_point_collection_locked_then_cleaned_up_by_fix(machine: Machine, xfs: Path) -> None:
    agent = machine.agent
    image = xfs / "vm" / "root.img"
    image.parent.mkdir()
    image.write_bytes(os.urandom(256 * 1024))

    def snap() -> object:
        return ReflinkProvider().create([DiskRef("root", str(image))], new_snapshot_id())

    item = "item-disks-1"
    points = RestorePointCollection(item, machine.points, machine=agent.hostname)
    try:
        expired = points.add(snap(), 1, "crash", now=time.time() - 3 * DAY)  # type: ignore[arg-type]
        live = points.add(snap(), 5, "crash")  # type: ignore[arg-type]
        old_file = Path(expired.snapshot.disk("root").read_path)
        lock_collection(item, "backup-admin", "legal hold", machine.points)

        locked = run_doctor(agent)
        check = locked.check("restore-point-collection")
        assert check["verdict"] == "fail" and check["error"]["code"] == "RestorePointCollectionLocked"
        assert "legal hold" in check["error"]["detail"] and "1 expired points" in check["error"]["detail"]
        assert f"kluis points unlock {item}" in check["fix"] and check["auto_fix"] is None
        not_fixed = run_doctor(agent, "--fix")
        assert not_fixed.verdict("restore-point-collection") == "fail" and old_file.exists()

        assert unlock_collection(item, machine.points)
        stale = run_doctor(agent)
        check = stale.check("restore-point-collection")
        assert check["verdict"] == "warn" and check["error"]["code"] == "InstantPointsExpired"
        assert check["error"]["params"] == {"item": item, "count": 1}

        fixed = run_doctor(agent, "--fix")
        assert [(f["fix"], f["ok"]) for f in fixed.data["fixes"]] == [("clean-instant-points", True)]
        assert f"1 from {item}" in fixed.data["fixes"][0]["message"]
        assert fixed.verdict("restore-point-collection") == "pass"
        assert not old_file.exists() and Path(live.snapshot.disk("root").read_path).exists()
        assert [p.id for p in points.points()] == [live.id]

        # Full: 18 points that have not expired leave no room for the next snapshot.
        for _ in range(MAX_POINTS - 1):
            points.add(snap(), 5, "crash")  # type: ignore[arg-type]
        full = run_doctor(agent)
        check = full.check("restore-point-collection")
        assert check["verdict"] == "fail" and check["error"]["code"] == "UserErrorRpCollectionLimitReached"
        assert check["error"]["params"] == {
            "machine": agent.hostname,
            "count": MAX_POINTS,
            "limit": MAX_POINTS,
        }
    finally:
        points.unlock()
        points.clean_up(everything=True)
        for path in (points.dir / "collection.json", points.dir / ".mutex"):
            path.unlink(missing_ok=True)
        points.dir.rmdir()


def test_vault_port_closed(machine: Machine) -> None:
    vault = machine.vault
    vault.stop()
    try:
        report = run_doctor(machine.agent)
    finally:
        vault.start()
    assert report.rc == 1
    assert report.verdict("vault-dns") == "pass"
    check = report.check("vault-tcp")
    assert check["verdict"] == "fail" and check["error"]["code"] == "100050"
    assert check["error"]["params"]["stage"] == "TCP"
    assert "refused the connection" in check["error"]["params"]["reason"]
    assert f"nc -vz 127.0.0.1 {vault.port}" in check["fix"]
    for later in ("vault-proxy", "vault-tls", "vault-http", "vault-auth", "clock-skew", "kek-vault"):
        assert report.verdict(later) == "skip", later
    wait_heartbeat(machine.agent, time.time())


def test_hung_agent_misses_its_heartbeats(machine: Machine) -> None:
    """A daemon that hangs (SIGSTOP) still holds its lock, but its heartbeats stop."""
    agent = machine.agent
    pid = daemon_of(agent)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(MIN_SILENCE + 1)
        report = run_doctor(agent)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert report.verdict("agent-service") == "pass"
    check = report.check("agent-heartbeat")
    assert check["verdict"] == "fail" and check["error"]["code"] == "AgentUnresponsive", check
    assert int(check["error"]["params"]["missed"]) >= MIN_SILENCE
    assert check["auto_fix"] == "restart the agent"
    wait_heartbeat(agent, time.time())


def test_agent_stopped_then_restarted_by_fix(machine: Machine) -> None:
    agent = machine.agent
    stop_daemon(agent)
    report = run_doctor(agent)
    check = report.check("agent-service")
    assert check["verdict"] == "fail" and check["error"]["code"] == "AgentNotRunning"
    assert "stopped at" in check["error"]["params"]["reason"]
    assert check["auto_fix"] == "restart the agent"
    assert report.verdict("agent-heartbeat") == "skip"

    fixed = run_doctor(agent, "--fix")
    assert [(f["fix"], f["ok"]) for f in fixed.data["fixes"]] == [("restart-agent", True)], fixed.data[
        "fixes"
    ]
    assert "kluis agent run --config-dir" in fixed.data["fixes"][0]["message"]
    before = {c["id"]: c["verdict"] for c in fixed.data["before_fixes"]}
    assert before["agent-service"] == "fail"
    assert fixed.verdict("agent-service") == "pass" and fixed.verdict("agent-heartbeat") == "pass"
    assert fixed.rc == 0, fixed.not_passing()
    assert daemon_of(agent) is not None  # left running, as a service would be


def test_scratch_folder_full(vault: VaultServer, workdir: Path) -> None:
    with loop_filesystem(workdir / "fullfs", size_mib=24) as fs:
        agent = register(vault, workdir, "doc-host-full", scratch=fs / "scratch")
        fill(fs)
        report = run_doctor(agent)
    check = report.check("scratch-folder")
    assert check["verdict"] == "fail" and check["error"]["code"] == "SalLowDiskSpace"
    assert check["error"]["params"]["path"] == str(fs / "scratch")
    assert check["error"]["params"]["needed"] == "16.0 MiB"
    assert "kluis agent config set scratch DIR" in check["fix"]
    assert report.verdict("scratch-temp-area") == "skip" and report.verdict("checksum-store") == "skip"


def test_backup_in_progress_on_an_item(vault: VaultServer, workdir: Path) -> None:
    agent = register(vault, workdir, "doc-host-busy")
    agent.tune(work_hours_limit=1_000_000, off_hours_limit=1_000_000)  # bytes/s: the backup takes a while
    agent.extra_env["KLUIS_PACK_SIZE"] = str(256 * 1024)  # small packs: the cancel is honoured soon
    data = workdir / "busy-data"
    make_tree(data, files=16, size=700 * 1024, seed=5)
    agent.start()
    try:
        policy = vault.policy()
        item = vault.files_item(agent.machine_id(), policy["id"], [str(data)], "busy-files")
        job = vault.backup(item["id"])
        wait_for(lambda: job["id"] in (agent.state().get("running") or {}), what="the backup to start")
        report = run_doctor(agent)
        vault.ok("POST", f"/api/v1/jobs/{job['id']}/cancel")
        vault.wait_job(job["id"], timeout=30)
    finally:
        stop_daemon(agent)
    check = report.check("jobs-in-progress")
    assert check["verdict"] == "warn", check
    assert check["error"]["code"] == "UserErrorBackupOperationInProgress"
    assert check["error"]["params"] == {"item": item["id"], "job": job["id"]}
    assert f"kluis jobs cancel {job['id']}" in check["fix"]
    # A warning does not fail the run.
    assert report.rc == 0, report.not_passing()


def _doctor_under(agent: AgentProc, prefix: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """``kluis doctor --json`` started through ``prefix`` (setpriv, a changed PATH...)."""
    cmd = [*prefix, sys.executable, "-m", "kluis", "doctor", "--json", "--config-dir", str(agent.config_dir)]
    proc = subprocess.run(
        cmd, env=env or doctor_env(agent), capture_output=True, text=True, timeout=120, check=False
    )
    try:
        return {c["id"]: c for c in json.loads(proc.stdout)["checks"]}
    except ValueError:
        raise AssertionError(f"doctor printed no JSON (rc {proc.returncode}):\n{proc.stderr}") from None


def test_agent_config_readable_by_others(machine: Machine) -> None:
    config = machine.agent.config_file
    config.chmod(0o644)
    try:
        report = run_doctor(machine.agent)
    finally:
        config.chmod(0o600)
    check = report.check("agent-key-permissions")
    assert check["verdict"] == "fail" and check["error"]["code"] == "AgentKeyPermissionsWrong", check
    assert check["error"]["params"] == {"path": str(config), "mode": "0644", "owner": "root"}
    assert check["fix"] == f"chown root:root {config} && chmod 0600 {config}"
    assert run_doctor(machine.agent).verdict("agent-key-permissions") == "pass"


def test_daemon_of_an_older_version_is_restarted_by_fix(machine: Machine) -> None:
    """The package was upgraded while the daemon kept running the old code."""
    agent = machine.agent
    stop_daemon(agent)
    old = "import kluis; kluis.__version__ = '0.0.9'\nfrom kluis.cli.main import app\napp()"
    args = [sys.executable, "-c", old, "agent", "run", "--config-dir", str(agent.config_dir)]
    since = time.time()
    proc = subprocess.Popen(
        [*args, "--hostname", agent.hostname],
        env=agent.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_heartbeat(agent, since)
        report = run_doctor(agent)
        check = report.check("agent-version")
        assert check["verdict"] == "warn" and check["error"]["code"] == "AgentRestartNeeded", check
        assert check["error"]["params"]["running"] == "0.0.9"
        assert check["auto_fix"] == "restart the agent"
        fixed = run_doctor(agent, "--fix")
        assert [f["fix"] for f in fixed.data["fixes"]] == ["restart-agent"], fixed.data["fixes"]
        assert proc.wait(timeout=40) is not None  # the old daemon was stopped
        assert fixed.verdict("agent-version") == "pass", fixed.check("agent-version")
        assert daemon_of(agent) not in (None, proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if daemon_of(agent) is None:
            agent.start()


def test_reboot_pending_after_updates(machine: Machine) -> None:
    marker = Path("/run/reboot-required")
    if marker.exists():
        pytest.skip(f"{marker} exists on this machine already; the test would remove a real marker")
    packages = marker.with_name("reboot-required.pkgs")
    marker.write_text("*** System restart required ***\n")
    packages.write_text("linux-image-amd64\nlibc6\n")
    try:
        report = run_doctor(machine.agent)
    finally:
        marker.unlink()
        packages.unlink()
    check = report.check("machine-health")
    assert check["verdict"] == "warn" and check["error"]["code"] == "MachineRebootPending", check
    assert "linux-image-amd64, libc6" in check["error"]["params"]["reason"]
    assert check["fix"] == "reboot the machine"
    assert run_doctor(machine.agent).verdict("machine-health") == "pass"


def test_agent_without_the_capability_to_freeze(machine: Machine) -> None:
    drop = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]
    check = _doctor_under(machine.agent, drop)["snapshot-freeze"]
    assert check["verdict"] == "fail" and check["error"]["code"] == "UserErrorFsFreezeFailed", check
    assert "CAP_SYS_ADMIN" in check["error"]["params"]["reason"]
    assert "User=root" in check["fix"]


def test_btrfs_mounted_but_btrfs_tool_missing(machine: Machine, workdir: Path) -> None:
    image = workdir / "btrfs.img"
    with open(image, "wb") as f:
        f.truncate(128 << 20)
    run("mkfs.btrfs", "-q", "-f", str(image))
    mounts = Mounts()
    try:
        target = mounts.mount(mounts.loop(image), workdir / "btrfs-mnt", fstype="btrfs")
        # A PATH without the directories that hold btrfs-progs: the tool is "not installed".
        env = doctor_env(machine.agent) | {"PATH": str(workdir / "empty-bin")}
        check = _doctor_under(machine.agent, [], env=env)["snapshot-btrfs"]
        assert check["verdict"] == "fail" and check["error"]["code"] == "ExtensionDependencyMissing", check
        assert str(target) in check["details"]["mounts"]
        assert "btrfs-progs" in check["fix"]
        assert _doctor_under(machine.agent, [])["snapshot-btrfs"]["verdict"] == "pass"
    finally:
        mounts.close()
        image.unlink(missing_ok=True)


def test_scratch_folder_on_tmpfs_warns(vault: VaultServer, workdir: Path) -> None:
    mnt = workdir / "tmpfs-scratch"
    mnt.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt))
    try:
        agent = register(vault, workdir, "doc-host-tmpfs", scratch=mnt / "scratch")
        report = run_doctor(agent)
    finally:
        run("umount", "-l", str(mnt))
    check = report.check("scratch-folder")
    assert check["verdict"] == "warn" and check["error"]["code"] == "ScratchFolderUnsupportedFs", check
    assert check["error"]["params"] == {"path": str(mnt / "scratch"), "fstype": "tmpfs"}
    assert "kluis agent config set scratch DIR" in check["fix"]

"""An agent that goes silent while the snapshot task runs: the vault fails the job with the
seeds' snapshot-status error (GuestAgentSnapshotTaskStatusError), not a generic timeout.

Real processes: a vault with a 4-second stall timeout, an agent daemon, the issue's "VM"
(an ext4 image on an XFS reflink host, loop-mounted as the guest) and a quiesce
pre-script that holds the job in the "Take snapshot" phase. The agent's process tree is
stopped with SIGSTOP there (a hung agent), so it sends nothing; later it is continued
and its late report does not overwrite the vault's verdict.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.helpers import AgentProc, VaultServer, base_env, kluis, start_vault, wait_for
from tests.extensions.helpers import Guest, Mounts, make_guest, root_script, run

TOOLS = ("losetup", "mkfs.xfs", "mkfs.ext4", "fsfreeze", "mount", "umount")
STALL_SECONDS = 4


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


@pytest.fixture
def world() -> Iterator[tuple[VaultServer, AgentProc, Guest, Path]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mounts and fsfreeze")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    workdir = Path(tempfile.mkdtemp(prefix="kluis-stall-test-"))
    mounts = Mounts()
    vault: VaultServer | None = None
    agent: AgentProc | None = None
    try:
        image = workdir / "host-xfs.img"
        with open(image, "wb") as fh:
            fh.truncate(512 * 1024 * 1024)
        run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
        host = mounts.mount(mounts.loop(image), workdir / "host")
        guest = make_guest(host, mounts, workdir / "guest", size_mib=32)
        vault = start_vault(workdir, stall_timeout=STALL_SECONDS)
        agent = AgentProc(root=workdir / "agent", hostname="stallhost", scratch=workdir / "agent" / "scratch")
        registered = agent.register(vault.credentials_file(workdir / "creds"))
        assert registered.rc == 0, registered.stdout + registered.stderr
        agent.tune(heartbeat_interval=1, poll_wait=5)
        agent.start()
        yield vault, agent, guest, workdir
    finally:
        if agent is not None and agent.process is not None:
            for pid in _tree(agent.process.pid):
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            agent.stop()
        if vault is not None:
            vault.kill()
            vault.close()
        mounts.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_agent_silent_during_snapshot(world: tuple[VaultServer, AgentProc, Guest, Path]) -> None:
    vault, agent, guest, workdir = world
    assert agent.process is not None
    pidfile = workdir / "pre.pid"
    script = root_script(workdir / "pre.sh", f"echo $$ > {pidfile}\nexec sleep 120")
    conf = agent.config_dir / "quiesce.toml"
    conf.write_text(f'[pre]\nscript = "{script}"\ntimeout = 300\n')
    os.chown(conf, 0, 0)
    conf.chmod(0o600)
    vault.ok(
        "POST",
        "/api/v1/policies",
        json={
            "name": "vms",
            "schedule": {"kind": "daily", "timezone": "UTC", "times": ["03:00"]},
            "retention": {"daily": 30, "instant_days": 1},
        },
    )
    env = base_env()
    env.update(
        KLUIS_VAULT_URL=vault.url, KLUIS_TOKEN=vault.admin_token, KLUIS_AGENT_CONFIG_DIR=str(agent.config_dir)
    )
    made = kluis("protect", "disks", str(guest.image), "--policy", "vms", "--name", "vm1", "--json", env=env)
    assert made.rc == 0, made.stdout + made.stderr

    job = vault.backup(made.json["id"])
    wait_for(
        lambda: pidfile.exists() and pidfile.read_text().strip() != "", timeout=60, what="the pre-script"
    )
    assert vault.job(job["id"])["phase"] == "Take snapshot"
    stopped_at = time.monotonic()
    tree = _tree(agent.process.pid)
    for pid in tree:
        os.kill(pid, signal.SIGSTOP)
    try:
        failed = vault.wait_job(job["id"], timeout=30)
        waited = time.monotonic() - stopped_at
    finally:
        # Let the hung agent go on: its pre-script ends (killed), the quiesce fails, it reports late.
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert failed["status"] == "Failed", failed
    assert failed["error"]["code"] == "GuestAgentSnapshotTaskStatusError", failed
    assert failed["phase"] == "Take snapshot"
    assert "stallhost" in failed["error"]["message"]
    # The stall clock runs from the agent's last report, which came before the stop.
    assert waited < STALL_SECONDS + 15, waited

    # The agent wakes up and finishes its side; the vault's verdict stands.
    time.sleep(3)
    assert agent.process.poll() is None, "the agent died after being continued"
    again = vault.job(job["id"])
    assert again["status"] == "Failed" and again["error"]["code"] == "GuestAgentSnapshotTaskStatusError", (
        again
    )
    # Nothing was left frozen: the guest takes writes.
    (guest.mountpoint / "after.txt").write_text("writable\n")

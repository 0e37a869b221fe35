"""``kluis points prune ITEM``: expired instant points go within a time budget, locks refuse.

A real vault (to resolve the item), a registered agent configuration (its scratch
folder holds the collections) and real reflink snapshots on an XFS file system.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kluis.agent.extensions.snapshot import DiskRef, RestorePointCollection
from kluis.agent.extensions.snapshot.instant import DAY
from kluis.agent.extensions.snapshot.providers import ReflinkProvider, Snapshot, new_snapshot_id
from tests.agent.helpers import AgentProc, Result, VaultServer, base_env, kluis, start_vault


@dataclass
class Machine:
    """The vault, the agent's configuration and one item of its machine."""

    vault: VaultServer
    agent: AgentProc
    item_id: str

    def cli(self, *args: str) -> Result:
        """``kluis ARGS`` as an administrator on the agent's machine."""
        env = base_env()
        env.update(
            KLUIS_VAULT_URL=self.vault.url,
            KLUIS_TOKEN=self.vault.admin_token,
            KLUIS_AGENT_CONFIG_DIR=str(self.agent.config_dir),
        )
        return kluis(*args, env=env)

    def collection(self) -> RestorePointCollection:
        """The item's restore point collection, where the agent keeps it."""
        return RestorePointCollection(self.item_id, self.agent.scratch / "instant-points")


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    """A vault and a registered (not running) agent with a protected item named ``vm-prune``."""
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices and mounts")
    workdir = Path(tempfile.mkdtemp(prefix="kluis-prune-test-"))
    vault: VaultServer | None = None
    try:
        vault = start_vault(workdir)
        agent = AgentProc(root=workdir / "agent", hostname="prunehost", scratch=workdir / "agent" / "scratch")
        registered = agent.register(vault.credentials_file(workdir / "creds"))
        assert registered.rc == 0, registered.stdout + registered.stderr
        policy = vault.policy("prune")
        src = workdir / "src"
        src.mkdir()
        item = vault.files_item(agent.machine_id(), policy["id"], [str(src)], "vm-prune")
        yield Machine(vault, agent, item["id"])
    finally:
        if vault is not None:
            vault.kill()
            vault.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _snap(image: Path) -> Snapshot:
    return ReflinkProvider().create([DiskRef("root", str(image))], new_snapshot_id())


def _fill(collection: RestorePointCollection, image: Path, expired: int, live: int) -> list[Snapshot]:
    """``expired`` points kept 1 day two days ago, then ``live`` points kept from now."""
    long_ago = time.time() - 2 * DAY
    snaps: list[Snapshot] = []
    for i in range(expired + live):
        snap = _snap(image)
        collection.add(snap, 1 if i < expired else 5, "crash", now=long_ago + i if i < expired else None)
        snaps.append(snap)
    return snaps


def _exists(snap: Snapshot) -> bool:
    return os.path.exists(snap.disk("root").read_path)


def test_prune_stops_at_its_time_limit_and_finishes_in_later_runs(machine: Machine, xfs_host: Path) -> None:
    image = xfs_host / "vm" / "root.img"
    image.parent.mkdir()
    image.write_bytes(os.urandom(1024 * 1024))
    collection = machine.collection()
    snaps = _fill(collection, image, expired=4, live=1)
    assert all(_exists(s) for s in snaps)

    # A budget of 0: one deletion, then the clean-up stops and says how many are left.
    first = machine.cli("points", "prune", "vm-prune", "--time-limit", "0", "--json")
    assert first.rc == 0, first.stdout + first.stderr
    body = first.json
    assert body["deleted"] == [snaps[0].id] and body["remaining"] == 3 and body["complete"] is False
    assert body["kept"] == 4
    [warning] = body["warnings"]
    assert warning["code"] == "RestorePointCleanupIncomplete" and warning["severity"] == "warning"
    assert warning["params"] == {"item": machine.item_id, "remaining": 3}
    assert "3 recovery points are still to be deleted" in warning["message"]
    assert not _exists(snaps[0]) and all(_exists(s) for s in snaps[1:])

    # People get the deleted ids on stdout and the warning, with what to do, on stderr.
    second = machine.cli("points", "prune", "vm-prune", "--time-limit", "0")
    assert second.rc == 0, second.stdout + second.stderr
    assert snaps[1].id in second.stdout and "RestorePointCleanupIncomplete" in second.stderr
    assert "2 recovery points are still to be deleted" in second.stderr
    assert "kluis points prune ITEM" in second.stderr

    # Runs again until done; the default budget takes the rest in one go.
    last = machine.cli("points", "prune", "vm-prune", "--json")
    assert last.rc == 0, last.stdout + last.stderr
    done = last.json
    assert done["deleted"] == [s.id for s in snaps[2:4]] and done["remaining"] == 0
    assert done["complete"] is True and done["warnings"] == [] and done["kept"] == 1
    assert [p.id for p in collection.points()] == [snaps[4].id] and _exists(snaps[4])
    assert not any(_exists(s) for s in snaps[:4])

    # Nothing expired: nothing to do, and that is not a warning.
    idle = machine.cli("points", "prune", "vm-prune", "--time-limit", "0", "--json")
    assert idle.rc == 0 and idle.json["deleted"] == [] and idle.json["complete"] is True, idle.stdout
    collection.remove(snaps[4].id)


def test_prune_refuses_a_locked_collection(machine: Machine, xfs_host: Path) -> None:
    image = xfs_host / "vm" / "root.img"
    image.parent.mkdir()
    image.write_bytes(os.urandom(256 * 1024))
    collection = machine.collection()
    snaps = _fill(collection, image, expired=2, live=0)
    locked = machine.cli("points", "lock", "vm-prune", "--why", "legal hold", "--json")
    assert locked.rc == 0, locked.stdout + locked.stderr

    refused = machine.cli("points", "prune", "vm-prune", "--json")
    assert refused.rc == 8, refused.stdout + refused.stderr
    assert refused.error["code"] == "RestorePointCollectionLocked"
    assert len(collection.points()) == 2 and all(_exists(s) for s in snaps)

    assert machine.cli("points", "unlock", "vm-prune", "--json").rc == 0
    freed = machine.cli("points", "prune", "vm-prune", "--json")
    assert freed.rc == 0 and freed.json["deleted"] == [s.id for s in snaps], freed.stdout + freed.stderr
    assert collection.points() == []


def test_a_backup_clean_up_keeps_to_its_budget(xfs_host: Path, tmp_path: Path) -> None:
    """``reserve`` (the clean-up before a backup's snapshot) leaves the warning the disk job reports."""
    image = xfs_host / "vm" / "root.img"
    image.parent.mkdir()
    image.write_bytes(os.urandom(256 * 1024))
    collection = RestorePointCollection("item-budget", tmp_path / "points", cleanup_seconds=0)
    snaps = _fill(collection, image, expired=3, live=0)
    assert collection.reserve() == [snaps[0].id]
    cleanup = collection.last_cleanup
    assert cleanup is not None and cleanup.remaining == 2
    warning = cleanup.warning()
    assert warning is not None and warning.code == "RestorePointCleanupIncomplete"
    assert warning.params == {"item": "item-budget", "remaining": 2}
    assert collection.reserve(time_limit=60) == [s.id for s in snaps[1:]]
    assert collection.last_cleanup is not None and collection.last_cleanup.warning() is None

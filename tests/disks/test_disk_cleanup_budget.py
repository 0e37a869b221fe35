"""A disk backup's clean-up of expired instant points keeps to its time budget and says so.

The agent of this module's site runs with ``KLUIS_AGENT_CLEANUP_SECONDS=0``: the clean-up
before each snapshot deletes one expired point and stops. The job then completes with
RestorePointCleanupIncomplete, and ``kluis points prune`` deletes the rest.
"""

from __future__ import annotations

import time

from kluis.agent.extensions.snapshot import DiskRef, RestorePointCollection
from kluis.agent.extensions.snapshot.instant import DAY
from kluis.agent.extensions.snapshot.providers import ReflinkProvider, new_snapshot_id
from tests.disks.conftest import Site


def test_backup_reports_an_unfinished_clean_up_and_prune_finishes_it(site: Site) -> None:
    site.agent.stop()
    site.agent.extra_env["KLUIS_AGENT_CLEANUP_SECONDS"] = "0"
    site.agent.start()
    made = site.cli("protect", "disks", str(site.guest.image), "--policy", "vms", "--name", "vm-b", "--json")
    assert made.rc == 0, made.stdout + made.stderr
    item_id = made.json["id"]

    # Three real snapshots of the VM's disk, kept one day, two days ago: all expired.
    collection = RestorePointCollection(item_id, site.agent.scratch / "instant-points")
    long_ago = time.time() - 2 * DAY
    old = []
    for i in range(3):
        snap = ReflinkProvider().create([DiskRef("root", str(site.guest.image))], new_snapshot_id())
        collection.add(snap, 1, "crash", now=long_ago + i)
        old.append(snap)

    job = site.backup(item_id)
    assert job["status"] == "CompletedWithWarnings", job
    [warning] = [w for w in job["warnings"] if w["code"] == "RestorePointCleanupIncomplete"]
    assert warning["params"] == {"item": item_id, "remaining": 2}, warning
    assert job["result"]["stats"]["instant_cleaned_up"] == [old[0].id]
    kept = [p.id for p in collection.points()]
    assert kept[:2] == [old[1].id, old[2].id] and len(kept) == 3  # the new snapshot is kept too

    pruned = site.cli("points", "prune", "vm-b", "--json")
    assert pruned.rc == 0, pruned.stdout + pruned.stderr
    assert pruned.json["deleted"] == [old[1].id, old[2].id] and pruned.json["complete"] is True
    assert [p.id for p in collection.points()] == kept[2:]

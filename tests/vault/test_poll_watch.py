"""Long polls and work queued by another vault process (found by the shared database check)."""

from __future__ import annotations

import threading
import time
from typing import Any

from kluis.vault import jobs
from kluis.vault.api.machines import DB_POLL_SECONDS
from kluis.vault.db.models import ProtectedItem
from tests.vault.helpers import Agent, VaultServer


def test_waiting_polls_get_work_queued_by_another_process(vault: VaultServer) -> None:
    # Two machines polling at once; the jobs are written straight into the database from this
    # (test) process, as another vault process would, so the server's notifier never hears of them.
    policy = vault.policy()
    agents = [Agent(vault).registered() for _ in range(2)]
    items = [str(vault.item(a.machine_id, policy["id"])["id"]) for a in agents]
    for agent in agents:
        agent.work(wait=0)
    got: dict[int, dict[str, Any]] = {}

    def poll(i: int) -> None:
        start = time.monotonic()
        work = agents[i].work(wait=20)
        got[i] = {"work": work, "took": time.monotonic() - start}

    threads = [threading.Thread(target=poll, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    queued: list[str] = []
    with vault.db.write() as s:
        for item_id in items:
            item = s.get(ProtectedItem, item_id)
            assert item is not None
            queued.append(jobs.start_backup(s, item, trigger="OnDemand", created_by="another process").id)
    for thread in threads:
        thread.join(30)
    for i in range(2):
        assert [j["id"] for j in got[i]["work"]["jobs"]] == [queued[i]]
        assert got[i]["took"] < DB_POLL_SECONDS + 3
    # Nothing is left to hand out: the next poll waits its full time and comes back empty.
    start = time.monotonic()
    assert agents[0].work(wait=1) == {"jobs": [], "cancel": []}
    assert time.monotonic() - start >= 0.9

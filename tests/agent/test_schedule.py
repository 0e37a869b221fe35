"""A policy's schedule fires in a real vault process and a real agent runs the backup.

The vault runs without the spread of scheduled jobs (``scheduler.spread = 0``), so the
job is created when the policy's time comes. The schedule's resolution is a minute: the
policy runs at the next whole minute at least ``LEAD`` seconds away, and the test waits
for it (about a minute).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from tests.agent.helpers import AgentProc, VaultServer, make_tree, wait_for

LEAD = 15  # seconds: time to create the policy and the item before the run
VAULT_OVERRIDES = {"schedule_spread": 0}  # scheduled jobs start on the minute


def _next_minute(lead: float) -> dt.datetime:
    """The first whole minute at least ``lead`` seconds from now (UTC)."""
    earliest = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead)
    minute = earliest.replace(second=0, microsecond=0)
    return minute if minute >= earliest else minute + dt.timedelta(minutes=1)


def test_the_policys_schedule_fires_and_the_agent_backs_up(vault: VaultServer, workdir: Path) -> None:
    agent = AgentProc(root=workdir / "agent", hostname="host-s", scratch=workdir / "agent" / "scratch")
    result = agent.register(vault.credentials_file(workdir / "creds"))
    assert result.rc == 0, result.stdout + result.stderr
    agent.tune(heartbeat_interval=1, poll_wait=5)
    agent.start()
    try:
        run = _next_minute(LEAD)
        assert run - dt.datetime.now(dt.UTC) >= dt.timedelta(seconds=LEAD)
        policy = vault.ok(
            "POST",
            "/api/v1/policies",
            json={
                "name": "every-day-now",
                "schedule": {"kind": "daily", "timezone": "UTC", "times": [run.strftime("%H:%M")]},
                "retention": {"daily": 7},
            },
        )
        data = workdir / "scheduled-data"
        files = make_tree(data, files=20, size=16 * 1024, seed=11)
        item = vault.files_item(agent.machine_id(), policy["id"], [str(data)], "scheduled")
        # No backup before the policy's time (protecting the item made a ConfigureBackup job).
        assert vault.ok("GET", "/api/v1/jobs", params={"item_id": item["id"], "type": "Backup"}) == []

        def scheduled_job() -> dict[str, Any] | None:
            found = vault.ok("GET", "/api/v1/jobs", params={"item_id": item["id"], "type": "Backup"})
            return found[0] if found else None

        wait_s = (run - dt.datetime.now(dt.UTC)).total_seconds() + 30
        job = wait_for(scheduled_job, timeout=wait_s, interval=0.5, what="the scheduled backup job")
        assert job["trigger"] == "Scheduled", job
        created = dt.datetime.fromisoformat(job["created_at"])
        assert created >= run, (created, run)  # not before the policy's time
        done = vault.wait_job(job["id"], timeout=60)
        assert done["status"] == "Completed", done
        assert done["result"]["stats"]["files_read"] == len(files)
        points = vault.ok("GET", "/api/v1/points", params={"item_id": item["id"]})
        assert [p["id"] for p in points] == [done["result"]["point_id"]]
        # One run of the schedule makes one job: later ticks find the run handled.
        later = vault.ok("GET", "/api/v1/jobs", params={"item_id": item["id"], "type": "Backup"})
        assert [j["id"] for j in later] == [job["id"]]
    finally:
        agent.stop()

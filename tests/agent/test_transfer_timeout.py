"""A vault that goes silent mid-upload: the backup ends as BackupDataTransferTimeout.

A real vault and a real agent daemon. The agent runs with a short request timeout and
outage limit (``KLUIS_AGENT_TRANSFER_TIMEOUT``, ``KLUIS_AGENT_OUTAGE_LIMIT``) and a
bandwidth limit, so that its backup is still sending when the vault process is stopped
(SIGSTOP): the kernel still takes connections and bytes, nothing answers. Once the agent
has given up the vault is resumed (SIGCONT) and the job's report reaches it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kluis.agent.store import ResilientStore
from kluis.catalog import KluisError
from kluis.stores.vault import VaultStore
from tests.agent.helpers import AgentProc, VaultServer, make_tree, wait_for

REQUEST_TIMEOUT = 1.5  # seconds one request may wait
OUTAGE_LIMIT = 3.0  # seconds of retrying before the job fails
RATE = 1_000_000  # bytes per second: the backup takes ~8 s unless stopped


@pytest.fixture(scope="module")
def agent(vault: VaultServer, workdir: Path) -> Iterator[AgentProc]:
    """A running agent with short transfer timeouts, small packs and a bandwidth limit."""
    proc = AgentProc(
        root=workdir / "agent-t",
        hostname="host-t",
        scratch=workdir / "agent-t" / "scratch",
        extra_env={
            "KLUIS_AGENT_TRANSFER_TIMEOUT": str(REQUEST_TIMEOUT),
            "KLUIS_AGENT_OUTAGE_LIMIT": str(OUTAGE_LIMIT),
            "KLUIS_PACK_SIZE": str(256 * 1024),
        },
    )
    registered = proc.register(vault.credentials_file(workdir / "creds"))
    assert registered.rc == 0, registered.stdout + registered.stderr
    proc.tune(heartbeat_interval=1, poll_wait=5, work_hours_limit=RATE, off_hours_limit=RATE)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def stopped(vault: VaultServer) -> Iterator[None]:
    """The vault process stopped (not killed) for the block; always resumed."""
    assert vault.process is not None
    os.kill(vault.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(vault.process.pid, signal.SIGCONT)


def test_silent_vault_mid_upload_fails_the_backup_with_a_transfer_timeout(
    vault: VaultServer, agent: AgentProc, workdir: Path
) -> None:
    data = workdir / "data-t"
    make_tree(data, files=24, size=220 * 1024, seed=5)
    policy = vault.policy("t")
    item = vault.files_item(agent.machine_id(), policy["id"], [str(data)], "silent")
    job = vault.backup(item["id"])
    wait_for(
        lambda: (vault.job(job["id"])["progress"].get("bytes_done") or 0) > 0,
        timeout=30,
        what="the transfer to start",
    )
    log_before = agent.log.read_text(errors="replace") if agent.log.exists() else ""
    with stopped(vault):
        stopped_at = time.monotonic()
        # The agent's own word that it gave up; the job report waits for the vault.
        wait_for(
            lambda: "kept timing out" in agent.log.read_text(errors="replace")[len(log_before) :],
            timeout=40,
            interval=0.2,
            what="the agent to give up on the upload",
        )
        gave_up_after = time.monotonic() - stopped_at
    done = vault.wait_job(job["id"], timeout=60)
    assert done["status"] == "Failed", done
    error = done["error"]
    assert error["code"] == "BackupDataTransferTimeout", done
    assert error["params"]["item"] == "silent"
    # It tried for at least the outage limit (counted from the upload's first attempt, which
    # may have begun before the stop: the bandwidth limit spreads a pack over time).
    seconds = error["params"]["seconds"]
    assert OUTAGE_LIMIT <= seconds <= gave_up_after + 10, (seconds, gave_up_after)
    assert f"timed out after {seconds} seconds" in error["message"]
    assert not vault.ok("GET", "/api/v1/points", params={"item_id": item["id"]})

    # The vault is back: the next backup of the item runs through.
    again = vault.wait_job(vault.backup(item["id"])["id"], timeout=60)
    assert again["status"] == "Completed", again


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _upload(url: str, *, item: str | None = "docs") -> KluisError:
    """One upload through the agent's retrying store with a 0.5 s request timeout and 1 s outage limit."""
    inner = VaultStore(url, "m" * 32, "token", timeout=0.5, retries=1)
    store = ResilientStore(inner, outage_limit=1.0, item=item)
    try:
        with pytest.raises(KluisError) as exc:
            store.put("config", b"x" * 4096)
        return exc.value
    finally:
        store.close()


def test_only_a_silent_vault_is_a_transfer_timeout() -> None:
    """A closed port stays 100050; a port that takes the connection and never answers times out."""
    refused = _upload(f"http://127.0.0.1:{_free_port()}")
    assert refused.code == "100050", refused.to_dict()

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel accepts; nobody reads or answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        timed_out = _upload(url)
        assert timed_out.code == "BackupDataTransferTimeout", timed_out.to_dict()
        assert timed_out.params["item"] == "docs" and timed_out.params["seconds"] >= 1
        # A store that is not a backup's (a restore's reads) has no item: the network error stays.
        assert _upload(url, item=None).code == "100050"

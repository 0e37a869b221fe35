"""The agent daemon (``kluis agent run``): heartbeat, long-poll for work, run jobs, report.

Threads: one sends heartbeats (status, version, extension handler states); one
long-polls the vault for jobs and cancel requests; each job runs in its own thread
with a progress reporter. The main thread waits for SIGTERM/SIGINT, then stops the
running jobs (reported as failed because the agent stopped) and exits.

Never two backups of one item: the vault refuses a second backup of an item while one
runs, and the daemon checks again locally; a backup handed out for an item that is
already being backed up here is reported as UserErrorBackupOperationInProgress
("could not start, another job was in progress"), and the running one goes on.

The daemon never opens a port. It holds a lock in the scratch folder, so two daemons
cannot share one scratch folder (AgentAlreadyRunning).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from kluis import __version__
from kluis.agent.client import is_network_error, session_client
from kluis.agent.config import AgentConfig, current_hostname
from kluis.agent.registration import os_description
from kluis.agent.runner import Job, JobEnv, Outcome, coded
from kluis.agent.scratch import Layout
from kluis.agent.state import AgentState
from kluis.agent.store import OUTAGE_LIMIT
from kluis.agent.throttle import RateSchedule, TokenBucket
from kluis.catalog import KluisError

log = logging.getLogger("kluis.agent")
DEFAULT_HEARTBEAT = 60.0
STOP_GRACE = 20.0


@dataclass
class _Running:
    job: Job
    thread: threading.Thread
    item_id: str | None


class Daemon:
    """One agent process for one registered machine."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        hostname: str | None = None,
        outage_limit: float = OUTAGE_LIMIT,
    ) -> None:
        self.cfg = cfg
        self.hostname = current_hostname(hostname)
        self.layout = Layout(cfg.scratch)
        self.client = session_client(cfg)
        schedule = RateSchedule(cfg.bandwidth)
        self.buckets = (TokenBucket(schedule), TokenBucket(schedule))
        self.env = JobEnv(cfg, self.hostname, self.client, self.buckets, outage_limit)
        self.state = AgentState(self.layout.state)
        self.stop_event = threading.Event()
        self.stopping = threading.Event()
        self.heartbeat_interval = cfg.heartbeat_interval or DEFAULT_HEARTBEAT
        self._jobs: dict[str, _Running] = {}
        self._items: dict[str, str] = {}
        self._lock = threading.Lock()
        self._lock_file: TextIO | None = None

    # -- life cycle -------------------------------------------------------------------------

    def acquire_lock(self) -> None:
        """Hold the scratch folder's lock; AgentAlreadyRunning when another daemon has it."""
        self.layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        f = open(self.layout.lock, "a+")  # noqa: SIM115 - held for the daemon's lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise KluisError("AgentAlreadyRunning", pid=pid, path=str(self.layout.root)) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; returns the exit status."""
        self.acquire_lock()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _s, _f: self.stop_event.set())
        self.state.update(
            pid=os.getpid(),
            started_at=time.time(),
            agent_version=__version__,
            hostname=self.hostname,
            vault_url=self.cfg.vault_url,
            machine_id=self.cfg.machine_id,
        )
        log.info(
            "agent %s for machine %s (%s) of vault %s at %s",
            __version__,
            self.cfg.hostname,
            self.cfg.machine_id,
            self.cfg.vault_name,
            self.cfg.vault_url,
        )
        self.recover_interrupted()
        threads = [
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self._poll_loop, name="work-poll", daemon=True),
        ]
        for t in threads:
            t.start()
        while not self.stop_event.wait(0.5):
            pass
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Stop running jobs (they report that the agent stopped) and wait for them briefly."""
        log.info("agent stopping")
        self.stopping.set()
        deadline = time.monotonic() + STOP_GRACE
        with self._lock:
            running = list(self._jobs.values())
        for r in running:
            r.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.state.update(pid=None, stopped_at=time.time())
        self.client.close()

    def recover_interrupted(self) -> None:
        """Jobs a previous daemon left running: report them as failed, once."""
        for job_id, info in self.state.running().items():
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
            outcome = Outcome("Failed", KluisError("AgentRestartedDuringJob", job=job_id, started=started))
            try:
                self.client.result(job_id, outcome.body(), retries=3)
            except KluisError as exc:
                if is_network_error(exc):
                    continue  # try again at the next start
                log.info("job %s left by the previous agent: %s", job_id, exc.message)
            self.state.job_finished(job_id, {"status": "Failed", "code": "AgentRestartedDuringJob"})

    # -- heartbeat -----------------------------------------------------------------------------

    def heartbeat_once(self) -> dict[str, Any] | None:
        """Send one heartbeat; the vault's answer, or None when it failed (recorded in the state)."""
        with self._lock:
            busy = bool(self._jobs)
        body = {
            "hostname": self.hostname,
            "agent_version": __version__,
            "agent_status": "Busy" if busy else "Ready",
            "os": os_description(),
            "extensions": self.extensions(),
        }
        try:
            answer = self.client.heartbeat(self.cfg.machine_id, body)
        except KluisError as exc:
            if exc.code == "AuthTokenInvalid" and self.reload_token():
                return self.heartbeat_once()
            log.warning("heartbeat failed: %s: %s", exc.code, exc.message)
            self.state.update(last_heartbeat_error=exc.to_dict(), last_heartbeat_error_at=time.time())
            return None
        if self.cfg.heartbeat_interval is None and answer.get("heartbeat_interval"):
            self.heartbeat_interval = float(answer["heartbeat_interval"])
        self.state.update(
            last_heartbeat_at=time.time(),
            last_heartbeat_error=None,
            heartbeat_interval=self.heartbeat_interval,
            agent_outdated=bool(answer.get("agent_outdated")),
            latest_agent_version=answer.get("latest_agent_version"),
            extensions=body["extensions"],
        )
        return answer

    def reload_token(self) -> bool:
        """After ``kluis agent register`` ran again (a new token), use the token it wrote."""
        try:
            fresh = AgentConfig.load(self.cfg.dir)
        except KluisError:
            return False
        if fresh.machine_id != self.cfg.machine_id or fresh.token == self.cfg.token:
            return False
        log.info("the machine was registered again; using its new token")
        self.cfg.token = fresh.token  # jobs build their stores from this same object
        self.client.http.headers["Authorization"] = f"Bearer {fresh.token}"
        return True

    def extensions(self) -> list[dict[str, Any]]:
        """Handler states of the extensions installed in the scratch folder, as the heartbeat carries them."""
        try:
            from kluis.agent.extensions.snapshot import ExtensionManager

            entries = ExtensionManager(self.layout.extensions, machine=self.cfg.hostname).heartbeat_entries()
        except (ImportError, OSError, ValueError, TypeError) as exc:
            log.warning("extension handler states cannot be read: %s", exc)
            return []
        keep = ("name", "version", "state", "message")
        return [{k: str(e[k])[:1000] for k in keep if e.get(k) is not None} for e in entries]

    def _heartbeat_loop(self) -> None:
        while not self.stop_event.is_set():
            self.heartbeat_once()
            self.stop_event.wait(self.heartbeat_interval)

    # -- work --------------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        backoff = 1.0
        while not self.stop_event.is_set():
            with self._lock:
                full = len(self._jobs) >= self.cfg.max_jobs
            if full:
                # Cancel requests still arrive with the running jobs' progress answers.
                self.stop_event.wait(0.5)
                continue
            try:
                work = self.client.work(self.cfg.machine_id, self.cfg.poll_wait)
            except KluisError as exc:
                if exc.code == "AuthTokenInvalid" and self.reload_token():
                    continue
                log.warning("asking the vault for work failed: %s: %s", exc.code, exc.message)
                self.state.update(last_poll_error=exc.to_dict(), last_poll_error_at=time.time())
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            self.handle_work(work)

    def handle_work(self, work: dict[str, Any]) -> None:
        """Start handed-out jobs and pass on cancel requests."""
        for job_id in work.get("cancel") or []:
            with self._lock:
                running = self._jobs.get(str(job_id))
            if running is not None:
                log.info("job %s: cancel requested", job_id)
                running.job.cancel.set()
        for desc in work.get("jobs") or []:
            self.start_job(desc)

    def start_job(self, desc: dict[str, Any]) -> None:
        """Run a job in its own thread, unless its item is already being backed up here."""
        self.reload_token()  # a poll that began before a re-registration hands out jobs too
        job = Job(self.env, desc, stopping=self.stopping)
        item_id = str(job.item["id"]) if job.item.get("id") else None
        with self._lock:
            if job.id in self._jobs:
                return  # the same job handed out again (a retried poll): it already runs
            holder = self._items.get(item_id) if item_id and job.type == "Backup" else None
            if holder is None:
                thread = threading.Thread(
                    target=self._run_job, args=(job,), name=f"job-{job.id}", daemon=True
                )
                self._jobs[job.id] = _Running(job, thread, item_id if job.type == "Backup" else None)
                if item_id and job.type == "Backup":
                    self._items[item_id] = job.id
        if holder is not None:
            log.info("job %s not started: backup job %s of item %s is still running", job.id, holder, item_id)
            error = KluisError(
                "UserErrorBackupOperationInProgress", item=job.item.get("name", item_id), job=holder
            )
            threading.Thread(
                target=self._report, args=(job.id, Outcome("Failed", error)), daemon=True
            ).start()
            return
        self.state.job_started(job.id, {"type": job.type, "item": item_id})
        log.info("job %s: %s of %s started", job.id, job.type, job.item.get("name", item_id or "?"))
        thread.start()

    def _run_job(self, job: Job) -> None:
        try:
            outcome = job.run()
            if outcome.error is not None:
                log.warning("job %s: %s: %s", job.id, outcome.error.code, outcome.error.message)
            log.info("job %s ended: %s", job.id, outcome.status)
            self._report(job.id, outcome)
        finally:
            with self._lock:
                running = self._jobs.pop(job.id, None)
                if running is not None and running.item_id and self._items.get(running.item_id) == job.id:
                    del self._items[running.item_id]

    def _report(self, job_id: str, outcome: Outcome) -> None:
        try:
            self.client.result(job_id, outcome.body())
        except KluisError as exc:
            if is_network_error(exc):
                # Keep the job in the state file: the next start reports it.
                log.error("job %s: result could not be reported: %s", job_id, exc.message)
                return
            log.error("job %s: the vault refused the result: %s: %s", job_id, exc.code, exc.message)
        summary: dict[str, Any] = {"status": outcome.status}
        if outcome.error is not None:
            summary["error"] = coded(outcome.error)
        self.state.job_finished(job_id, summary)

    def running_jobs(self) -> list[str]:
        """Ids of jobs running now."""
        with self._lock:
            return list(self._jobs)

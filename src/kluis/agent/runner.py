"""Running one job the vault handed out: checks, the engine's work, progress, the result.

Before every job: the host name is the one registered (ID 230006), the scratch folder
passes its checks (scratch.py), the KEK file unlocks the key set (ID 34506). Then a
backup runs :class:`kluis.engine.backup.FileBackup` over the machine's repository in
the vault, and a restore runs :class:`kluis.engine.restore.Restorer` from the point's
repository (this machine's, or another's with that machine's passphrase).

Progress goes to the vault about once a second (files, bytes, rate, ETA, phase); the
vault's answer carries a cancel request, which the engine honours at its next
``should_stop`` check.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kluis.agent import scratch
from kluis.agent.client import VaultClient, is_network_error
from kluis.agent.config import AgentConfig
from kluis.agent.keys import open_own, open_source, own_kek
from kluis.agent.mount import active_mounts
from kluis.agent.store import (
    OUTAGE_LIMIT,
    AgentVaultStore,
    PackJournal,
    ResilientStore,
    UploadPipeline,
    adopt_unindexed_packs,
    ensure_repository,
)
from kluis.agent.throttle import TokenBucket
from kluis.catalog import KluisError
from kluis.engine.backup import BackupOptions, FileBackup
from kluis.engine.progress import Progress
from kluis.engine.restore import CONFLICT_MODES, RestoreOptions, Restorer

log = logging.getLogger("kluis.agent")
BACKUP_PHASE = "Transfer data to vault"
RESTORE_PHASE = "Transfer data from vault"
MAX_WARNINGS = 50
MOUNT_POLL = 5.0  # seconds between looks at the mount markers while a backup waits
# The vault treats 95% as "nearly done" (no more cancelling); an estimate must not reach it.
MAX_RUNNING_PERCENT = 94.0


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def coded(error: KluisError) -> dict[str, Any]:
    """An error or warning as the vault's job report takes it: code, parameters, detail, our message.

    The detail (the specific path or numbers behind the error) travels on its own, so the
    vault's job record keeps it next to the catalog's text in the reader's language.
    """
    out: dict[str, Any] = {
        "code": error.code,
        "params": {k: _json_safe(v) for k, v in error.params.items()},
        "message": error.message[:2000],
    }
    if error.detail:
        out["detail"] = str(error.detail)[:2000]
    return out


def _human(n: float) -> str:
    return scratch.human(n)


@dataclass
class Outcome:
    """How a job ended, in the shape of the vault's result report."""

    status: str
    error: KluisError | None = None
    warnings: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The result report's JSON body."""
        out: dict[str, Any] = {"status": self.status, "warnings": self.warnings, "stats": self.stats}
        if self.error is not None:
            out["error"] = coded(self.error)
        return out


class ProgressReporter:
    """Sends the newest progress to the vault about once a second, and learns of cancel requests."""

    def __init__(
        self,
        client: VaultClient,
        job_id: str,
        cancel: threading.Event,
        *,
        interval: float = 1.0,
        keepalive: float = 10.0,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.cancel = cancel
        self.interval = interval
        self.keepalive = keepalive
        self.phase = ""
        self._progress: Progress | None = None
        self._note: str | None = None
        self._dirty = True
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"progress-{job_id}", daemon=True)
        self.sent = 0

    def start(self) -> None:
        """Start reporting."""
        self._thread.start()

    def stop(self) -> None:
        """Send the last state and stop."""
        self._done.set()
        self._thread.join(timeout=10)

    def update(self, progress: Progress) -> None:
        """Engine progress callback; the object given is read again at every report (it is live)."""
        with self._lock:
            self._progress = progress
            self._dirty = True

    def set_phase(self, phase: str) -> None:
        """Enter a phase (reported at once)."""
        with self._lock:
            self.phase = phase
            self._dirty = True

    def note_outage(self, error: KluisError | None) -> None:
        """Say in the job's message that the vault is unreachable (None: it is back)."""
        self.note(None if error is None else f"waiting for the vault: {error.message}")

    def note(self, text: str | None) -> None:
        """A message that replaces the counts in the job's progress until cleared with None."""
        with self._lock:
            self._note = text
            self._dirty = True

    def body(self) -> dict[str, Any]:
        """The progress report's JSON body."""
        with self._lock:
            p, phase, note = self._progress, self.phase, self._note
            self._dirty = False
        body: dict[str, Any] = {"phase": phase or None}
        if p is None:
            if note:
                body["message"] = note
            return body
        total = p.total_bytes
        body.update(
            files_done=p.files,
            bytes_done=p.bytes,
            files_failed=p.warnings,
            rate=round(p.rate),
            eta_seconds=None if p.eta is None else round(p.eta, 1),
        )
        if total:
            body["bytes_total"] = total
            body["percent"] = round(min(MAX_RUNNING_PERCENT, 100.0 * p.bytes / total), 1)
        text = f"{p.files} files, {_human(p.bytes)} at {_human(p.rate)}/s"
        if p.eta is not None:
            text += f", about {int(p.eta)} s left"
        if p.warnings:
            text += f", {p.warnings} skipped"
        body["message"] = note or text
        return body

    def _send(self) -> None:
        try:
            answer = self.client.progress(self.job_id, self.body())
            self.sent += 1
        except KluisError as exc:
            if exc.code == "JobNotInProgress":
                # The vault ended the job (timed out, or cancelled before it reached us): stop.
                self.cancel.set()
            elif not is_network_error(exc):
                log.warning("progress report for job %s refused: %s", self.job_id, exc.message)
            return
        if answer.get("cancel"):
            self.cancel.set()

    def _counts(self) -> tuple[int, int, int] | None:
        p = self._progress
        return None if p is None else (p.files, p.bytes, p.warnings)

    def _loop(self) -> None:
        # Report when something moved; otherwise only now and then, so a stalled job still
        # hears of a cancel and the vault sees it is alive, without a write every second.
        last = 0.0
        seen = self._counts()
        while not self._done.wait(self.interval):
            now = time.monotonic()
            counts = self._counts()
            if self._dirty or counts != seen or now - last >= self.keepalive:
                self._send()
                last, seen = now, counts
        self._send()


@dataclass
class JobEnv:
    """What a job needs from the daemon."""

    cfg: AgentConfig
    hostname: str
    client: VaultClient
    buckets: tuple[TokenBucket, TokenBucket] | None = None
    outage_limit: float = OUTAGE_LIMIT


def check_hostname(env: JobEnv) -> None:
    """ID 230006 when the machine's name is not the one it registered with."""
    if env.hostname != env.cfg.hostname:
        raise KluisError("230006", registered=env.cfg.hostname, current=env.hostname)


class Job:
    """One job from the vault, run on this machine."""

    def __init__(self, env: JobEnv, desc: dict[str, Any], *, stopping: threading.Event) -> None:
        self.env = env
        self.desc = desc
        self.id = str(desc["id"])
        self.type = str(desc.get("type", ""))
        self.item: dict[str, Any] = dict(desc.get("item") or {})
        self.params: dict[str, Any] = dict(desc.get("params") or {})
        self.cancel = threading.Event()
        self.stopping = stopping
        self.started = time.time()
        self.reporter = ProgressReporter(env.client, self.id, self.cancel)

    def should_stop(self) -> bool:
        """The engine's cancel check."""
        return self.cancel.is_set() or self.stopping.is_set()

    def run(self) -> Outcome:
        """Run to the end; never raises."""
        self.reporter.start()
        try:
            if self.type == "Backup":
                outcome = self._backup()
            elif self.type == "Restore":
                outcome = self._restore()
            else:
                raise KluisError("AgentJobUnsupported", job=self.id, what=f"a job of type {self.type!r}")
        except BaseException as exc:
            outcome = self._failure(exc)
        finally:
            self.reporter.stop()
        return outcome

    def _failure(self, exc: BaseException) -> Outcome:
        if self.stopping.is_set():
            return Outcome(
                "Failed",
                KluisError(
                    "AgentRestartedDuringJob",
                    job=self.id,
                    started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)),
                ),
            )
        if self.cancel.is_set():
            return Outcome("Cancelled")
        if isinstance(exc, KluisError):
            return Outcome("Failed", exc)
        if not isinstance(exc, Exception):
            raise exc
        ref = secrets.token_hex(6)
        log.error("internal error %s in job %s", ref, self.id, exc_info=exc)
        return Outcome("Failed", KluisError("AgentInternalError", job=self.id, ref=ref))

    # -- backup ------------------------------------------------------------------------------

    def _backup(self) -> Outcome:
        env, cfg = self.env, self.env.cfg
        kind = str(self.item.get("kind", ""))
        if kind == "disks":
            from kluis.agent.disk_runner import run_disk_backup

            return run_disk_backup(self)
        if kind != "files":
            raise KluisError(
                "AgentJobUnsupported", job=self.id, what=f"a backup of a {kind or 'unknown'} item"
            )
        item_id = str(self.item["id"])
        spec = dict(self.item.get("spec") or {})
        paths = [str(p) for p in spec.get("paths") or []]
        excludes = [str(p) for p in spec.get("exclude") or []]
        check_hostname(env)
        checks = scratch.check_before_job(cfg.scratch, item_id=item_id, paths=paths)
        layout = checks.layout
        assert checks.checksums is not None
        store: ResilientStore | None = None
        pipeline: UploadPipeline | None = None
        try:
            own_kek(cfg)  # 34506 before anything goes over the network
            journal = PackJournal(layout.cache(cfg.machine_id) / "unindexed-packs")
            inner = AgentVaultStore(cfg, item_id=item_id, job_id=self.id, buckets=env.buckets)
            store = ResilientStore(
                inner,
                journal=journal,
                should_stop=self.should_stop,
                outage_limit=env.outage_limit,
                on_wait=self.reporter.note_outage,
                item=str(self.item.get("name") or item_id),
            )
            # Packs go up in the background while the engine packs the next ones.
            pipeline = UploadPipeline(store)
            self._wait_for_mounts(item_id)
            ensure_repository(cfg, store=pipeline)
            repo = open_own(cfg, pipeline, layout.cache(cfg.machine_id))
            adopted = adopt_unindexed_packs(repo, pipeline, journal)
            self.reporter.set_phase(BACKUP_PHASE)
            estimate = checks.protected_bytes or None
            backup = FileBackup(
                repo,
                checksum_store=checks.checksums,
                options=BackupOptions(excludes=excludes, hostname=cfg.hostname, item=item_id),
                progress=self.reporter.update,
                failed_log=layout.failed_log(self.id),
                should_stop=self.should_stop,
                estimate_bytes=estimate,
            )
            if estimate is None and checks.size is not None:
                progress = backup.progress  # a first backup's ETA starts once du has counted
                checks.size.when_counted(lambda n: setattr(progress, "total_bytes", n))
            # The reporter reads this live object every second; the engine's own callbacks come
            # only when a directory is finished, which can be long apart.
            self.reporter.update(backup.progress)
            result = backup.run(paths)
        finally:
            checks.checksums.close()
            if checks.size is not None:
                checks.size.close()
            if pipeline is not None:
                pipeline.close()  # closes the store too
            elif store is not None:
                store.close()
        scratch.record_backup_bytes(layout, item_id, result.bytes)
        self.reporter.update(backup.progress)
        stats = result.as_dict()
        stats.update(
            skipped_files=result.warnings,
            adopted_blobs=adopted,
            network_retries=store.retries,
            uploads_not_resent=store.resent_skipped,
            scratch={"path": str(cfg.scratch), "free": checks.free, "needed": checks.needed},
        )
        warnings: list[dict[str, Any]] = []
        status = "Completed"
        if result.status == "completed_with_warnings":
            status = "CompletedWithWarnings"
            log_path = result.failed_files_log or str(layout.failed_log(self.id))
            warnings.append(
                coded(
                    KluisError(
                        "BackupCompletedWithWarnings",
                        item=self.item.get("name", item_id),
                        count=result.warnings,
                        log=log_path,
                    )
                )
            )
            warnings.extend(coded(e) for e in backup.errors[:MAX_WARNINGS])
        return Outcome(status, None, warnings, stats)

    def _wait_for_mounts(self, item_id: str) -> None:
        """As in the seeds: a backup of an item waits while one of its recovery points is mounted."""
        while True:
            mounts = active_mounts(self.env.cfg.scratch, item_id)
            if not mounts:
                self.reporter.note_outage(None)
                return
            where = ", ".join(f"{m.point} at {m.mountpoint}" for m in mounts)
            self.reporter.note(
                f"waiting: recovery point {where} is mounted; the backup starts after unmounting"
            )
            for _ in range(int(MOUNT_POLL / 0.2)):
                if self.should_stop():
                    raise KluisError("OperationCancelled", operation="backup")
                time.sleep(0.2)

    # -- restore -------------------------------------------------------------------------------

    def _restore(self) -> Outcome:
        if self.item.get("kind") == "disks":
            from kluis.agent.disk_restore_runner import run_disk_restore

            return run_disk_restore(self)
        env, cfg = self.env, self.env.cfg
        point_id = str(self.params.get("point_id", ""))
        source = str(
            (self.desc.get("repository") or {}).get("machine_id") or self.params.get("source_machine_id")
        )
        check_hostname(env)
        checks = scratch.check_before_job(cfg.scratch, item_id=None)
        layout = checks.layout
        conflict = str(
            self.params.get("conflict") or ("overwrite" if self.params.get("overwrite") else "copy")
        )
        if conflict not in CONFLICT_MODES:
            raise KluisError("AgentJobUnsupported", job=self.id, what=f"the conflict mode {conflict!r}")
        inner = AgentVaultStore(cfg, repo_machine_id=source, buckets=env.buckets)
        store = ResilientStore(
            inner,
            should_stop=self.should_stop,
            outage_limit=env.outage_limit,
            on_wait=self.reporter.note_outage,
        )
        try:
            if source == cfg.machine_id:
                repo = open_own(cfg, store, layout.cache(source))
            else:
                repo = open_source(cfg, source, store, layout.cache(source))
            self.reporter.set_phase(RESTORE_PHASE)
            # As given (Selection reads them from the root): warnings then name them as typed.
            include = [str(p) for p in self.params.get("paths") or [] if str(p).strip("/")]
            restorer = Restorer(
                repo,
                point_id,
                str(self.params.get("target_path") or "/"),
                options=RestoreOptions(include=include, conflict=conflict),
                progress=self.reporter.update,
                should_stop=self.should_stop,
            )
            self.reporter.update(restorer.progress)
            result = restorer.run()
        finally:
            store.close()
        self.reporter.update(restorer.progress)
        stats = result.as_dict()
        warnings = stats.pop("warnings", [])
        stats.update(warning_count=len(warnings), source_machine_id=source, conflict=conflict)
        coded_warnings = [
            {
                "code": str(w.get("code")),
                "params": dict(w.get("params") or {}),
                "message": str(w.get("message", "")),
            }
            for w in warnings[:MAX_WARNINGS]
        ]
        status = "CompletedWithWarnings" if warnings else "Completed"
        return Outcome(status, None, coded_warnings, stats)

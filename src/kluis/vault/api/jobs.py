"""Jobs: listing, cancelling, the agent's progress and result reports, maintenance jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from kluis.vault import agent_jobs, jobs, maintenance
from kluis.vault.api.deps import READER, any_machine, get_ctx, one_of, require
from kluis.vault.auth import Principal, Role
from kluis.vault.context import VaultContext

router = APIRouter(tags=["jobs"])


class Progress(BaseModel):
    """An agent's progress report."""

    phase: str | None = Field(default=None, max_length=60)
    percent: float | None = Field(default=None, ge=0, le=100)
    bytes_done: int | None = Field(default=None, ge=0)
    bytes_total: int | None = Field(default=None, ge=0)
    files_done: int | None = Field(default=None, ge=0)
    files_total: int | None = Field(default=None, ge=0)
    files_failed: int | None = Field(default=None, ge=0)
    rate: float | None = Field(default=None, ge=0, description="Bytes per second so far")
    eta_seconds: float | None = Field(default=None, ge=0, description="Estimated seconds left")
    message: str | None = Field(default=None, max_length=1000)


class CodedCondition(BaseModel):
    """An error or warning by catalog code and the parameters of its message."""

    code: str = Field(min_length=1, max_length=80)
    params: dict[str, Any] = Field(default_factory=dict)
    message: str | None = Field(
        default=None, max_length=2000, description="Used only for codes the vault lacks"
    )
    detail: str | None = Field(
        default=None, max_length=2000, description="The specific facts behind it (a path, the numbers)"
    )


class Result(BaseModel):
    """How an agent job ended."""

    status: str = Field(description="Completed, CompletedWithWarnings, Failed or Cancelled")
    error: CodedCondition | None = None
    warnings: list[CodedCondition] = Field(default_factory=list, max_length=1000)
    stats: dict[str, Any] = Field(default_factory=dict)


class GcRequest(BaseModel):
    """Garbage-collect one machine's repository, or every machine's."""

    machine_id: str | None = Field(default=None, max_length=32)


@router.get("/jobs", summary="List jobs")
def list_jobs(
    status: str | None = None,
    type: str | None = None,
    item_id: str | None = None,
    machine_id: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    offset: int = Query(default=0, ge=0),
    ctx: VaultContext = Depends(get_ctx),
    _p: Principal = Depends(READER),
) -> list[dict[str, Any]]:
    """Jobs, newest first."""
    with ctx.db.read() as s:
        return jobs.list_jobs(
            s,
            status=one_of("status", status, jobs.STATUSES),
            job_type=one_of("type", type, jobs.JOB_TYPES),
            item_id=item_id,
            machine_id=machine_id,
            limit=limit,
            offset=offset,
        )


@router.get("/jobs/{job_id}", summary="Show a job")
def show(
    job_id: str, ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(READER)
) -> dict[str, Any]:
    """One job with its phase, progress and error details."""
    with ctx.db.read() as s:
        return jobs.job_dict(jobs.get_job(s, job_id))


@router.post("/jobs/{job_id}/cancel", status_code=202, summary="Cancel a job")
def cancel(
    job_id: str,
    ctx: VaultContext = Depends(get_ctx),
    _p: Principal = Depends(require(Role.OPERATOR, "cancel jobs")),
) -> dict[str, Any]:
    """Cancelled at once if no agent has it, else Cancelling until the agent confirms."""
    with ctx.db.write() as s:
        job = jobs.cancel(s, job_id)
        out = jobs.job_dict(job)
    ctx.notifier.notify(job.machine_id)
    return out


@router.post("/jobs/{job_id}/progress", summary="Agent: report progress")
def progress(
    job_id: str,
    body: Progress,
    ctx: VaultContext = Depends(get_ctx),
    p: Principal = Depends(any_machine("report job progress")),
) -> dict[str, Any]:
    """Records progress; ``cancel: true`` tells the agent to stop."""
    assert p.machine_id is not None
    with ctx.db.write() as s:
        return agent_jobs.report_progress(s, p.machine_id, job_id, body.model_dump(exclude_none=True))


@router.post("/jobs/{job_id}/result", summary="Agent: report how the job ended")
def result(
    job_id: str,
    body: Result,
    ctx: VaultContext = Depends(get_ctx),
    p: Principal = Depends(any_machine("report job results")),
) -> dict[str, Any]:
    """The finished job; a failed backup or restore may raise an alert."""
    assert p.machine_id is not None
    with ctx.db.write() as s:
        job = agent_jobs.report_result(
            s,
            p.machine_id,
            job_id,
            status=body.status,
            error=body.error.model_dump() if body.error else None,
            warnings=[w.model_dump() for w in body.warnings],
            stats=body.stats,
        )
        return jobs.job_dict(job)


@router.post("/maintenance/gc", status_code=202, summary="Queue garbage collection")
def queue_gc(
    body: GcRequest,
    ctx: VaultContext = Depends(get_ctx),
    p: Principal = Depends(require(Role.CONTRIBUTOR, "start garbage collection")),
) -> list[dict[str, Any]]:
    """GarbageCollect jobs (one per machine); the vault holding the scheduler lease runs them."""
    with ctx.db.write() as s:
        return [jobs.job_dict(j) for j in maintenance.queue_gc(s, body.machine_id, created_by=p.name)]


@router.post("/maintenance/retention", status_code=202, summary="Queue a retention run")
def queue_retention(
    ctx: VaultContext = Depends(get_ctx),
    p: Principal = Depends(require(Role.CONTRIBUTOR, "expire recovery points")),
) -> dict[str, Any]:
    """A Retention job: expires recovery points the policies no longer keep."""
    with ctx.db.write() as s:
        return jobs.job_dict(maintenance.queue_retention(s, created_by=p.name))

"""The repository object API: ``/api/v1/machines/{machine_id}/repo/...`` (see ``kluis.vault.repo``).

Uploads stream into a temporary file (with a size limit and a running BLAKE3) and are
checked only when complete; downloads stream from the store in windows and honour
``Range: bytes=a-b``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import blake3
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from kluis.catalog import KluisError
from kluis.vault import repo
from kluis.vault.api.deps import get_ctx, get_principal, machine_self
from kluis.vault.auth import Principal
from kluis.vault.context import VaultContext

router = APIRouter(prefix="/machines/{machine_id}/repo", tags=["repository"])
STREAM_WINDOW = 4 * 1024 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class HaveRequest(BaseModel):
    """Blob ids to look up (hex), at most 10,000."""

    ids: list[str] = Field(max_length=repo.MAX_HAVE)


def _service(ctx: VaultContext) -> repo.RepoService:
    return repo.RepoService(ctx)


def _reader(machine_id: str, ctx: VaultContext, principal: Principal) -> None:
    with ctx.db.read() as s:
        repo.machine_exists(s, machine_id)
        repo.can_read(s, principal, machine_id)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single byte range, or None for the whole object."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None  # not understood (or several ranges): the whole object, as HTTP allows
    first, last = match.group(1), match.group(2)
    if not first:
        length = int(last)
        return (max(0, size - length), size - 1)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end)


@router.get("/objects", summary="List objects")
def list_objects(
    machine_id: str,
    prefix: str = "",
    after: str | None = None,
    limit: int = Query(default=1000, ge=1, le=10000),
    ctx: VaultContext = Depends(get_ctx),
    principal: Principal = Depends(get_principal),
) -> list[dict[str, Any]]:
    """Objects under ``prefix`` by name; page with ``after`` (the last name seen)."""
    _reader(machine_id, ctx, principal)
    return [
        {"name": o.name, "size": o.size} for o in _service(ctx).list_objects(machine_id, prefix, after, limit)
    ]


@router.head("/objects/{name:path}", summary="Size of an object")
def head_object(
    machine_id: str,
    name: str,
    ctx: VaultContext = Depends(get_ctx),
    principal: Principal = Depends(get_principal),
) -> Response:
    """200 with Content-Length, or 404."""
    _reader(machine_id, ctx, principal)
    info = _service(ctx).stat(machine_id, name)
    return Response(status_code=200, headers={"Content-Length": str(info.size), "Accept-Ranges": "bytes"})


@router.get("/objects/{name:path}", summary="Read an object (Range supported)")
async def get_object(
    machine_id: str,
    name: str,
    request: Request,
    ctx: VaultContext = Depends(get_ctx),
    principal: Principal = Depends(get_principal),
) -> Response:
    """The object's bytes, streamed; 206 for a range, 416 when it starts past the end."""
    await run_in_threadpool(_reader, machine_id, ctx, principal)
    service = _service(ctx)
    info = await run_in_threadpool(service.stat, machine_id, name)
    size = info.size
    wanted = _parse_range(request.headers.get("range"), size)
    headers = {"Accept-Ranges": "bytes"}
    if wanted is not None:
        start, end = wanted
        if start >= size or start > end:
            headers["Content-Range"] = f"bytes */{size}"
            return Response(status_code=416, headers=headers)
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        status = 206
    else:
        start, end, status = 0, size - 1, 200
    headers["Content-Length"] = str(max(0, end - start + 1))

    async def body() -> AsyncIterator[bytes]:
        offset = start
        while offset <= end:
            n = min(STREAM_WINDOW, end - offset + 1)
            chunk = await run_in_threadpool(service.read, machine_id, name, offset, n)
            if not chunk:
                return
            yield chunk
            offset += len(chunk)

    return StreamingResponse(
        body(), status_code=status, headers=headers, media_type="application/octet-stream"
    )


@router.put("/objects/{name:path}", summary="Upload an object (checked before it becomes visible)")
async def put_object(
    machine_id: str,
    name: str,
    request: Request,
    item: str | None = Query(default=None, max_length=32, description="points/: the protected item"),
    job: str | None = Query(default=None, max_length=32, description="points/: the backup job"),
    ctx: VaultContext = Depends(get_ctx),
    _p: Principal = Depends(machine_self("write to its repository")),
) -> dict[str, Any]:
    """Stores the object after its checks; 200 with ``created: false`` when it was already there."""
    repo.classify(name)  # refuse bad names before reading a byte
    limit = ctx.config.pack_size_limit
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise KluisError("RepoUploadTooLarge", name=name, limit=limit)
    hasher = blake3.blake3()
    size = 0
    fd, tmp = tempfile.mkstemp(prefix="kluis-upload-", dir=ctx.config.tmp_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise KluisError("RepoUploadTooLarge", name=name, limit=limit)
                hasher.update(chunk)
                f.write(chunk)
        upload = repo.Upload(
            name=name, data=await run_in_threadpool(_read_all, tmp), blake3_hex=hasher.hexdigest()
        )
    finally:
        os.unlink(tmp)
    return await run_in_threadpool(_service(ctx).put, machine_id, upload, item_id=item, job_id=job)


def _read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@router.delete("/objects/{name:path}", summary="Refused: only retention and GC delete")
def delete_object(machine_id: str, name: str, _p: Principal = Depends(get_principal)) -> None:
    """Always 403 RepoDeleteNotAllowed."""
    raise KluisError("RepoDeleteNotAllowed", name=name)


@router.post("/have", summary="Which of these blob ids the repository holds")
def have(
    machine_id: str,
    body: HaveRequest,
    ctx: VaultContext = Depends(get_ctx),
    principal: Principal = Depends(get_principal),
) -> dict[str, list[str]]:
    """The subset of ``ids`` that are live blobs of the machine."""
    _reader(machine_id, ctx, principal)
    return {"have": _service(ctx).have(machine_id, body.ids)}

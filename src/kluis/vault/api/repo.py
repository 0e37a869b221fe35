"""The repository object API: ``/api/v1/machines/{machine_id}/repo/...`` (see ``kluis.vault.repo``).

Uploads stream into a memory buffer (with a size limit; past a memory budget, or without a
declared length, into a temporary file) and are checked only when complete; downloads stream
from the store in windows and honour ``Range: bytes=a-b``.

Packs are the bulk of every backup, so their path avoids extra work: the body lands in a
reused pack-sized buffer (no temporary file written and read back, no fresh allocation per
upload), and the hash, checks and store write run in one worker-thread hop. A range that
fits one window is read and answered in one hop too (restores read packs in windows).
"""

from __future__ import annotations

import mmap
import os
import re
import tempfile
import threading
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

import blake3
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from kluis.catalog import KluisError
from kluis.engine.packs import pack_buffer_size
from kluis.vault import repo
from kluis.vault.api.deps import bearer_token, get_ctx, get_principal, machine_self, principal_of
from kluis.vault.auth import Principal
from kluis.vault.context import VaultContext

router = APIRouter(prefix="/machines/{machine_id}/repo", tags=["repository"])
STREAM_WINDOW = 4 * 1024 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
KEEP_BUFFERS = 4  # idle upload buffers kept for reuse (one per concurrent pack upload is typical)
# Bytes of uploads held in memory at once; past it (many agents uploading together) uploads are
# spooled to a temporary file in [server] tmp_dir instead, so memory stays bounded.
MEMORY_BUDGET = 256 * 1024 * 1024


class _BufferPool:
    """Upload buffers reused between requests: a pack-sized bytearray is allocated (and its
    pages faulted in) once, not for every pack. Buffers in use count against ``budget``."""

    def __init__(self, keep: int, budget: int) -> None:
        self.keep = keep
        self.budget = budget
        self._free: list[bytearray] = []
        self._in_use = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray | None:
        """A buffer of at least ``size`` bytes (contents are garbage), or None over the budget."""
        with self._lock:
            found = next((i for i, b in enumerate(self._free) if len(b) >= size), None)
            need = len(self._free[found]) if found is not None else pack_buffer_size(size)
            if self._in_use + need > self.budget:
                return None
            self._in_use += need
            if found is not None:
                return self._free.pop(found)
        return bytearray(need)

    def give(self, buf: bytearray) -> None:
        """Return a buffer; the smallest are dropped when more than ``keep`` wait."""
        with self._lock:
            self._in_use -= len(buf)
            self._free.append(buf)
            if len(self._free) > self.keep:
                self._free.sort(key=len)
                del self._free[0]


_POOL = _BufferPool(KEEP_BUFFERS, MEMORY_BUDGET)


class HaveRequest(BaseModel):
    """Blob ids to look up (hex), at most 10,000."""

    ids: list[str] = Field(max_length=repo.MAX_HAVE)


def _service(ctx: VaultContext) -> repo.RepoService:
    return repo.RepoService(ctx)


def _reader(machine_id: str, ctx: VaultContext, principal: Principal) -> None:
    if principal.is_machine and principal.machine_id == machine_id:
        # A machine reading its own repository: authenticating its token already found it
        # registered and not removed. This skips a second database session on every pack read.
        return
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
    token: str | None = Depends(bearer_token),
) -> Response:
    """The object's bytes, streamed; 206 for a range, 416 when it starts past the end."""
    service = _service(ctx)
    status, start, end, headers, first = await run_in_threadpool(
        _open_read, service, machine_id, name, request.headers.get("range"), ctx, token
    )
    if status == 416:
        return Response(status_code=416, headers=headers)
    if first is not None:
        # The whole answer was read with the checks: no streaming machinery for a window.
        return Response(first, status_code=status, headers=headers, media_type="application/octet-stream")

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


def _open_read(
    service: repo.RepoService,
    machine_id: str,
    name: str,
    range_header: str | None,
    ctx: VaultContext,
    token: str | None,
) -> tuple[int, int, int, dict[str, str], bytes | None]:
    """The caller's token, checks, size and range of a read, in one worker-thread hop; the
    bytes too when they fit one window. Returns (status, start, end inclusive, headers, bytes
    or None)."""
    _reader(machine_id, ctx, principal_of(ctx, token))
    size = service.stat(machine_id, name).size
    wanted = _parse_range(range_header, size)
    headers = {"Accept-Ranges": "bytes"}
    if wanted is not None:
        start, end = wanted
        if start >= size or start > end:
            headers["Content-Range"] = f"bytes */{size}"
            return 416, 0, -1, headers, None
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        status = 206
    else:
        start, end, status = 0, size - 1, 200
    length = max(0, end - start + 1)
    headers["Content-Length"] = str(length)
    if length > STREAM_WINDOW:
        return status, start, end, headers, None
    data = service.read(machine_id, name, start, length) if length else b""
    if len(data) != length:
        # The object changed size under us (it cannot for a valid repository): stream what is there.
        return status, start, end, headers, None
    return status, start, end, headers, data


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
    kind, _ident = repo.classify(name)  # refuse bad names before reading a byte
    limit = ctx.config.pack_size_limit
    raw = request.headers.get("content-length")
    declared = int(raw) if raw is not None and raw.isdigit() else None
    if declared is not None and declared > limit:
        raise KluisError("RepoUploadTooLarge", name=name, limit=limit)
    buf = _POOL.take(declared) if declared is not None else None
    if buf is None:
        # No declared length, or too many uploads in memory already: spool to a file.
        return await _spooled_put(request, ctx, machine_id, name, kind, limit, item, job)
    try:
        assert declared is not None
        size = await _receive(request, buf, declared, name)
        return await run_in_threadpool(
            _check_and_store, _service(ctx), machine_id, name, kind, buf, size, item, job
        )
    finally:
        _POOL.give(buf)


async def _spooled_put(
    request: Request,
    ctx: VaultContext,
    machine_id: str,
    name: str,
    kind: str,
    limit: int,
    item: str | None,
    job: str | None,
) -> dict[str, Any]:
    """The upload through a temporary file in ``[server] tmp_dir`` (memory stays bounded).

    The checks and the store read the file through a read-only memory map: its pages are
    the file's own page cache, which the kernel can drop, so a spooled pack is never copied
    whole into the vault's heap (that would undo the memory budget that sent it here).
    """
    size = 0
    fd, tmp = tempfile.mkstemp(prefix="kluis-upload-", dir=ctx.config.tmp_dir)
    try:
        with os.fdopen(fd, "w+b") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise KluisError("RepoUploadTooLarge", name=name, limit=limit)
                f.write(chunk)
            f.flush()
            return await run_in_threadpool(
                _check_and_store_file, _service(ctx), machine_id, name, kind, f, size, item, job
            )
    finally:
        os.unlink(tmp)


def _check_and_store_file(
    service: repo.RepoService,
    machine_id: str,
    name: str,
    kind: str,
    f: BinaryIO,
    size: int,
    item: str | None,
    job: str | None,
) -> dict[str, Any]:
    """:func:`_check_and_store` over a spooled upload, mapped rather than read into memory."""
    if size == 0:  # an empty file cannot be mapped
        return _check_and_store(service, machine_id, name, kind, b"", 0, item, job)
    mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    try:
        return _check_and_store(service, machine_id, name, kind, mapped, size, item, job)
    finally:
        try:
            mapped.close()
        except BufferError:
            pass  # a view of it is still held (by an error's traceback): unmapped when that goes


async def _receive(request: Request, buf: bytearray, declared: int, name: str) -> int:
    """Read the body into ``buf`` in place (its length was declared)."""
    size = 0
    with memoryview(buf) as view:
        async for chunk in request.stream():
            end = size + len(chunk)
            if end > declared:
                # The server's HTTP layer enforces Content-Length; refuse anyway rather than overrun.
                raise KluisError("ValidationFailed", reason="the body is longer than its Content-Length")
            view[size:end] = chunk
            size = end
    return size


def _check_and_store(
    service: repo.RepoService,
    machine_id: str,
    name: str,
    kind: str,
    buf: bytes | bytearray | mmap.mmap,
    size: int,
    item: str | None,
    job: str | None,
) -> dict[str, Any]:
    """Hash, check and store a received upload (worker thread: blake3 and the store release the GIL)."""
    with memoryview(buf) as whole, whole[:size] as view:
        # Packs go to the store straight from the buffer; the small objects are parsed as bytes.
        data: bytes | memoryview = view if kind == "data" else bytes(view)
        digest = blake3.blake3(data, max_threads=1).hexdigest()
        return service.put(
            machine_id, repo.Upload(name=name, data=data, blake3_hex=digest), item_id=item, job_id=job
        )


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

"""The machine's repository in the vault, as the agent's jobs use it.

Three layers over :class:`kluis.stores.vault.VaultStore`:

- :class:`AgentVaultStore` gives the vault store the agent's HTTP client: the
  configured proxy, the pinned certificate and the bandwidth throttle.
- :class:`ResilientStore` rides out network outages: each call is retried with
  exponential backoff for up to ``outage_limit`` seconds (honouring cancel); a
  retried pack or index upload first asks (HEAD) whether the vault already has it, so
  a pack whose upload was cut off after the vault stored it is not sent again. An
  upload of a backup that still times out (the vault took the connection, then went
  silent) when that budget is spent ends as BackupDataTransferTimeout; a vault that
  cannot be reached at all stays 100050.
- :class:`UploadPipeline` sends packs in the background (a few at a time) while the
  engine goes on packing: a pack upload to the vault waits on the network and on the
  vault's checks, where a local store only waits on the disk. Anything that could
  depend on those packs (an index, a point, any read) first waits for them.
- :class:`PackJournal` notes every pack before its upload and forgets it once an
  index file names it. A backup that was interrupted (network, crash, cancel) leaves
  packs in the vault that no index names; the next backup indexes them from their
  plaintext tables (:func:`adopt_unindexed_packs`) so their blobs are reused instead of
  uploaded again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

from kluis.agent.client import endpoint_of, is_network_error
from kluis.agent.config import AgentConfig, env_seconds
from kluis.agent.net import USER_AGENT, Endpoint, is_transfer_timeout, make_client
from kluis.agent.throttle import TokenBucket, paced
from kluis.catalog import KluisError
from kluis.engine import chunker as chunker_params
from kluis.engine.format import (
    FOOTER_SIZE,
    FORMAT_VERSION,
    TABLE_ENTRY_SIZE,
    IndexEntry,
    decode_index,
    decode_pack_trailer,
    pack_id_from_name,
    pack_name,
)
from kluis.engine.index import write_index_file
from kluis.engine.packs import pack_buffer_size
from kluis.engine.repository import Repository
from kluis.stores import ObjectInfo, Store
from kluis.stores.vault import RawTransfers, VaultStore

log = logging.getLogger("kluis.agent")
T = TypeVar("T")
_TAIL_GUESS = 64 * 1024


# Seconds a job keeps retrying a repository call while the vault is unreachable or silent
# before it fails. KLUIS_AGENT_OUTAGE_LIMIT changes it (read when the agent starts).
OUTAGE_LIMIT = env_seconds("KLUIS_AGENT_OUTAGE_LIMIT") or 900.0
TRANSFER_TIMEOUT = 120.0


def transfer_timeout() -> float:
    """Seconds one repository request may wait for the vault to take or answer data.

    120 unless KLUIS_AGENT_TRANSFER_TIMEOUT says otherwise. It is per request: a pack of
    16 MiB on a slow line needs its time, and a silent vault is retried up to the outage
    limit anyway.
    """
    return env_seconds("KLUIS_AGENT_TRANSFER_TIMEOUT") or TRANSFER_TIMEOUT


class AgentVaultStore(VaultStore):
    """A VaultStore that talks through the agent's client (proxy, pinned TLS, throttle)."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        repo_machine_id: str | None = None,
        item_id: str | None = None,
        job_id: str | None = None,
        buckets: tuple[TokenBucket, TokenBucket] | None = None,
    ) -> None:
        endpoint = endpoint_of(cfg)
        super().__init__(
            endpoint.url,
            cfg.machine_id,
            cfg.token,
            repo_machine_id=repo_machine_id,
            item_id=item_id,
            job_id=job_id,
            # One attempt per call: ResilientStore retries, with cancel checks and HEAD before re-sending.
            retries=1,
            # The agent's client adds the proxy, the pinned certificate and the throttle.
            client=make_client(endpoint, cfg.token, buckets=buckets, timeout=transfer_timeout()),
            raw=_raw_transfers(endpoint, cfg.token, buckets),
        )
        self.endpoint = endpoint


def _raw_transfers(
    endpoint: Endpoint, token: str, buckets: tuple[TokenBucket, TokenBucket] | None
) -> RawTransfers | None:
    """Pack reads and uploads over http.client (far less CPU under the interpreter lock than httpx).

    Same pinned certificate, token and bandwidth limits as the agent's client. Not through
    a proxy: those requests stay on httpx, which speaks to proxies.
    """
    if endpoint.effective_proxy() is not None:
        return None
    return RawTransfers(
        endpoint.url,
        {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT},
        timeout=transfer_timeout(),
        ssl_context=endpoint.ssl_context() if endpoint.https else None,
        check_peer=endpoint.check_pin if endpoint.https else None,
        before_body=buckets[1].consume if buckets else None,
        pace=functools.partial(paced, buckets[0]) if buckets else None,
    )


class PackJournal:
    """Packs uploaded (or being uploaded) that no index file names yet; one name per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def pending(self) -> set[str]:
        """Pack names waiting for an index."""
        try:
            return {line for line in self.path.read_text().splitlines() if line}
        except FileNotFoundError:
            return set()

    def intend(self, name: str) -> None:
        """Note a pack before its upload starts."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(name + "\n")

    def forget(self, names: set[str]) -> None:
        """Drop packs that an index now names (or that turned out not to exist)."""
        if not names:
            return
        with self._lock:
            left = sorted(self.pending() - names)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(n + "\n" for n in left))
            os.replace(tmp, self.path)

    def indexed(self, index_data: bytes, name: str) -> None:
        """An index file was stored: its packs are no longer waiting."""
        packs = {pack_name(e.pack) for e in decode_index(name, index_data)}
        self.forget(packs)


class ResilientStore(Store):
    """Retries through outages, skips re-sending what the vault has, keeps the pack journal."""

    def __init__(
        self,
        inner: Store,
        *,
        journal: PackJournal | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        outage_limit: float = OUTAGE_LIMIT,
        on_wait: Callable[[KluisError | None], None] | None = None,
        item: str | None = None,
    ) -> None:
        self.inner = inner
        # The backup's item, for BackupDataTransferTimeout (its name when the caller
        # knows it); None for a store that only reads (restores).
        self.item = item or getattr(inner, "item_id", None)
        self.url = inner.url
        self.remote = inner.remote
        self.journal = journal
        self.should_stop = should_stop
        self.outage_limit = outage_limit
        self.on_wait = on_wait
        self.retries = 0
        self.resent_skipped = 0

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        delay = 1.0
        deadline: float | None = None
        while True:
            try:
                result = fn()
            except KluisError as exc:
                if not is_network_error(exc):
                    raise
                now = time.monotonic()
                deadline = deadline or now + self.outage_limit
                if now >= deadline:
                    raise
                self.retries += 1
                log.warning("vault unreachable during %s (%s); retrying in %.0f s", what, exc.message, delay)
                if self.on_wait is not None:
                    self.on_wait(exc)
                self._sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if deadline is not None and self.on_wait is not None:
                self.on_wait(None)
            return result

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.should_stop():
                raise KluisError("OperationCancelled", operation="job")
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        resumable = name.startswith(("data/", "index/"))
        if self.journal is not None and name.startswith("data/"):
            self.journal.intend(name)
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and resumable and self._holds(name, len(data)):
                self.resent_skipped += 1
                return
            self.inner.put(name, data)

        started = time.monotonic()
        try:
            self._retry(f"upload of {name}", attempt)
        except KluisError as exc:
            # Past the outage limit, and the last try timed out mid-transfer: the vault
            # is there but does not take the data. Say that, not "cannot be reached".
            if self.item is None or not is_network_error(exc) or not is_transfer_timeout(exc):
                raise
            seconds = round(time.monotonic() - started)
            log.error("upload of %s kept timing out for %d s; giving up", name, seconds)
            raise KluisError(
                "BackupDataTransferTimeout",
                item=self.item,
                seconds=seconds,
                detail=f"upload of {name}: {exc.message}",
            ) from exc
        if self.journal is not None and name.startswith("index/"):
            self.journal.indexed(bytes(data), name)

    def _holds(self, name: str, size: int) -> bool:
        try:
            return self.inner.stat(name).size == size
        except KluisError as exc:
            if exc.code == "StoreObjectNotFound":
                return False
            raise

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._retry(f"download of {name}", lambda: self.inner.get(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        return self._retry(f"look-up of {name}", lambda: self.inner.stat(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(
            self._retry(f"listing of {prefix or 'the repository'}", lambda: list(self.inner.list(prefix)))
        )

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def close(self) -> None:
        self.inner.close()


def _failure(future: Future[None]) -> BaseException | None:
    """The error a finished future ended with (a cancelled one counts as failed)."""
    return CancelledError() if future.cancelled() else future.exception()


class UploadPipeline(Store):
    """Packs (``data/``) are uploaded by background threads; every other call waits for them.

    ``put`` of a pack copies it (the engine reuses its pack buffer at once) into a buffer of
    its own, reused from pack to pack, and returns as soon as an upload slot is free; at most
    ``in_flight`` packs are queued or sending.
    An index file is queued too, and sent only after every upload queued before it. Before
    anything else (a reference list, a point, a read, a listing) all pending uploads finish,
    and the first upload error is raised there, or by the next ``put``: so nothing is ever
    committed that names a pack the vault does not hold.
    """

    def __init__(self, inner: Store, *, threads: int = 2, in_flight: int = 3) -> None:
        self.inner = inner
        self.url = inner.url
        self.remote = inner.remote
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="kluis-upload")
        self._slots = threading.BoundedSemaphore(max(1, in_flight))
        self._lock = threading.Lock()
        self._pending: set[Future[None]] = set()
        self._error: BaseException | None = None
        # Upload buffers of finished uploads. A fresh 16 MiB buffer per pack cost ~10 ms of
        # page faults and copying under the interpreter lock, which stalled every other thread.
        self._free: list[bytearray] = []
        self._keep = max(1, in_flight)

    def _note(self, future: Future[None]) -> None:
        exc = future.exception()
        with self._lock:
            self._pending.discard(future)
            if exc is not None and self._error is None:
                self._error = exc

    def _done(self, future: Future[None]) -> None:
        self._note(future)
        self._slots.release()

    def _raise_failed(self) -> None:
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def drain(self) -> None:
        """Wait until every pack handed to ``put`` is stored; raise the first upload error."""
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                break
            wait(pending)
            # Noted here too: a finished future's callback may not have run yet.
            for future in pending:
                self._note(future)
        self._raise_failed()

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        if name.startswith("index/"):
            self._put_index(name, bytes(data))
            return
        if not name.startswith("data/"):
            self.drain()
            self.inner.put(name, data)
            return
        self._raise_failed()
        self._slots.acquire()
        try:
            self._raise_failed()
            size = len(data)
            buf = self._buffer(size)
            # The one copy an upload needs (the caller reuses its buffer), view to view:
            # ``bytearray[:n] = view`` copies the view into a fresh temporary first, which
            # cost 20 ms and thousands of page faults per pack, under the interpreter lock.
            memoryview(buf)[:size] = memoryview(data).cast("B")
            future = self._pool.submit(self.inner.put, name, memoryview(buf)[:size])
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._pending.add(future)

        def finished(f: Future[None]) -> None:
            with self._lock:  # before the slot is free, so that the next pack can take it
                if len(self._free) < self._keep:
                    self._free.append(buf)
            self._done(f)

        future.add_done_callback(finished)

    def _put_index(self, name: str, data: bytes) -> None:
        """Queue an index file behind the packs it may name, and return at once.

        The engine writes an index every 16 packs from whichever worker finished the 16th,
        holding the repository's index lock. Waiting there for the uploads in flight stalled
        that worker and every worker that finished a pack meanwhile. The vault refuses an
        index naming a pack it does not hold, so the index is sent once the last upload
        queued before it has finished; until then it holds no upload thread, which the
        packs queued after it need.
        """
        self._raise_failed()
        with self._lock:
            # Finished ones too: a failure may not be noted yet when its future is already done.
            before = list(self._pending)
        sent: Future[None] = Future()
        with self._lock:
            self._pending.add(sent)
        sent.add_done_callback(self._note)
        left = len(before)
        count = threading.Lock()

        def relay(upload: Future[None]) -> None:
            exc = upload.exception()
            if exc is None:
                sent.set_result(None)
            else:
                sent.set_exception(exc)

        def send() -> None:
            failed = next((e for f in before if (e := _failure(f)) is not None), None)
            if failed is not None:
                sent.set_exception(failed)  # a pack is lost: the index naming it stays back
                return
            try:
                self._pool.submit(self.inner.put, name, data).add_done_callback(relay)
            except BaseException as exc:  # the pool is shut down: the upload is abandoned
                sent.set_exception(exc)

        def one_finished(_f: Future[None]) -> None:
            nonlocal left
            with count:
                left -= 1
                if left:
                    return
            send()

        if not before:
            send()
        for f in before:
            f.add_done_callback(one_finished)

    def _buffer(self, size: int) -> bytearray:
        """A free upload buffer of at least ``size`` bytes (a new one when none fits)."""
        with self._lock:
            while self._free:
                buf = self._free.pop()
                if len(buf) >= size:
                    return buf
        return bytearray(pack_buffer_size(size))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.drain()
        return self.inner.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        self.drain()
        return self.inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.drain()
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.drain()
        self.inner.delete(name)

    def close(self) -> None:
        """Wait for (or, after a failure, abandon) the uploads, then close the inner store."""
        try:
            with contextlib.suppress(Exception):  # the job has failed already; closing goes on
                self.drain()
        finally:
            self._pool.shutdown(wait=True)
            self.inner.close()


def new_repository_config() -> dict[str, object]:
    """A repository's plaintext ``config`` object, as ``Repository.init`` writes it."""
    return {
        "version": FORMAT_VERSION,
        "id": secrets.token_hex(16),
        "chunker": {
            "min": chunker_params.MIN_SIZE,
            "avg": chunker_params.AVG_SIZE,
            "max": chunker_params.MAX_SIZE,
        },
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def ensure_repository(
    cfg: AgentConfig,
    key_id: str | None = None,
    key_body: str | None = None,
    *,
    store: Store | None = None,
) -> None:
    """Make sure the machine's repository has its key set and ``config`` in the vault.

    Registration stores the key set in the vault's database; the repository objects
    follow here (at registration, and again before a job if that step was cut off).
    """
    own = store or AgentVaultStore(cfg)
    try:
        if key_id is None or key_body is None:
            if any(True for _ in own.list("keys/")):
                key_id = None
            else:
                from kluis.agent.client import session_client

                client = session_client(cfg)
                try:
                    sets = client.key_sets(cfg.machine_id)
                finally:
                    client.close()
                if not sets:
                    raise KluisError(
                        "34506", path=str(cfg.kek_path), detail="the vault holds no key set for this machine"
                    )
                key_id, key_body = str(sets[0]["id"]), str(sets[0]["body"])
        if key_id is not None and key_body is not None and not own.exists(f"keys/{key_id}"):
            own.put(f"keys/{key_id}", key_body.encode())
        if not own.exists("config"):
            own.put("config", json.dumps(new_repository_config(), indent=1).encode())
    finally:
        if store is None:
            own.close()


def adopt_unindexed_packs(repo: Repository, store: Store, journal: PackJournal) -> int:
    """Index packs an interrupted backup uploaded but never indexed; returns how many blobs it gained."""
    pending = journal.pending()
    if not pending:
        return 0
    known = {e.pack for e in repo.index.entries()}
    gone: set[str] = set()
    entries: list[IndexEntry] = []
    for name in sorted(pending):
        try:
            pack_id = pack_id_from_name(name)
        except ValueError:
            gone.add(name)
            continue
        if pack_id in known:
            gone.add(name)
            continue
        try:
            size = store.stat(name).size
            tail = store.get(name, max(0, size - _TAIL_GUESS))
            count = (
                int.from_bytes(tail[-FOOTER_SIZE : -FOOTER_SIZE + 4], "little")
                if len(tail) >= FOOTER_SIZE
                else 0
            )
            need = count * TABLE_ENTRY_SIZE + FOOTER_SIZE
            if need > len(tail) and need <= size:
                tail = store.get(name, size - need)
            table = decode_pack_trailer(name, tail, size)
        except KluisError as exc:
            # Missing (never finished, or collected) or damaged: upload its blobs again instead.
            log.info("pack %s from an interrupted backup is not reused: %s", name, exc.message)
            gone.add(name)
            continue
        entries.extend(
            IndexEntry(e.id, pack_id, e.type, e.flags, e.offset, e.length, e.raw_length) for e in table
        )
    journal.forget(gone)
    if entries:
        index = write_index_file(store, entries)
        repo.index.add(entries)
        if index:
            repo.index.loaded_files.add(index)
    return len(entries)

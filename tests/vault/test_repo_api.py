"""The repository object API: every write is checked before it becomes visible.

Also the agent's client for it (VaultStore) and the engine's Repository working
through it end to end.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable

import pytest
from sqlalchemy import delete, func, select, update

from kluis.catalog import KluisError
from kluis.engine.format import (
    BlobType,
    encode_refs,
    index_name,
    object_id,
    pack_name,
    point_name,
    refs_name,
)
from kluis.engine.repository import Repository
from kluis.vault.db.models import Blob, IndexFile, Pack, RecoveryPoint
from kluis.vault.db.types import utcnow
from tests.vault.helpers import Agent, VaultServer, make_index, make_pack, make_point

ROOT = "/api/v1/machines/{}/repo"


@pytest.fixture(scope="module")
def agent(vault: VaultServer) -> Agent:
    """A registered machine whose repository the tests write."""
    return Agent(vault).registered()


def _count(vault: VaultServer, model: type, **where: object) -> int:
    with vault.db.read() as s:
        query = select(func.count()).select_from(model)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return int(s.scalar(query) or 0)


def test_full_backup_through_the_api(vault: VaultServer, agent: Agent) -> None:
    point_id = agent.backup()
    with vault.db.read() as s:
        point = s.get(RecoveryPoint, point_id)
        assert point is not None and point.machine_id == agent.machine_id
        assert point.refs_count == 3 and point.size == 12345 and point.kind == "files"
    listed = agent.call(
        "GET", ROOT.format(agent.machine_id) + "/objects", params={"prefix": "points/"}
    ).json()
    assert {"name": point_name(point_id), "size": listed[0]["size"]} in listed
    assert vault.ok("GET", f"/api/v1/points/{point_id}")["refs"] == 3


def test_bad_pack_hash_is_refused_and_not_stored(vault: VaultServer, agent: Agent) -> None:
    pid, pack, _ = make_pack()
    wrong = secrets.token_bytes(32)
    response = agent.put(pack_name(wrong), pack)
    assert response.status_code == 422 and response.json()["code"] == "RepoUploadChecksumMismatch"
    assert response.json()["params"]["actual"] == pid.hex()
    assert (
        agent.call("HEAD", ROOT.format(agent.machine_id) + f"/objects/{pack_name(wrong)}").status_code == 404
    )
    assert _count(vault, Pack, machine_id=agent.machine_id, pack_id=wrong) == 0


def test_damaged_pack_trailer_is_refused(vault: VaultServer, agent: Agent) -> None:
    _, pack, _ = make_pack()
    damaged = pack[:-20] + bytes(20)  # footer gone
    response = agent.put(pack_name(object_id(damaged)), damaged)
    assert response.status_code == 422 and response.json()["code"] == "RepoUploadRejected"
    truncated = pack[10:]  # blob lengths no longer add up
    response = agent.put(pack_name(object_id(truncated)), truncated)
    assert response.status_code == 422 and response.json()["code"] == "RepoUploadRejected"


def test_pack_upload_is_idempotent(vault: VaultServer, agent: Agent) -> None:
    pid, pack, _ = make_pack()
    first = agent.put(pack_name(pid), pack)
    again = agent.put(pack_name(pid), pack)
    assert first.json()["created"] is True and again.json()["created"] is False
    assert _count(vault, Pack, machine_id=agent.machine_id, pack_id=pid) == 1


def test_pack_uploaded_without_a_length_is_spooled_and_checked(vault: VaultServer, agent: Agent) -> None:
    # Without Content-Length the vault cannot size a memory buffer: the body goes through a
    # temporary file, with the same checks.
    pid, pack, entries = make_pack(count=4, size=5000)
    path = ROOT.format(agent.machine_id) + f"/objects/{pack_name(pid)}"
    chunks = (pack[i : i + 4096] for i in range(0, len(pack), 4096))
    stored = agent.call("PUT", path, content=chunks)
    assert stored.status_code == 200 and stored.json() == {
        "name": pack_name(pid),
        "size": len(pack),
        "created": True,
    }
    assert agent.call("GET", path).content == pack
    damaged = bytearray(pack)
    damaged[7] ^= 1
    chunks = (bytes(damaged[i : i + 4096]) for i in range(0, len(damaged), 4096))
    refused = agent.call("PUT", path, content=chunks)
    assert refused.status_code == 422 and refused.json()["code"] == "RepoUploadChecksumMismatch"
    # Small objects take the same path (read through a memory map of the file), even empty ones.
    iname, index = make_index(entries)
    base = ROOT.format(agent.machine_id) + "/objects/"
    indexed = agent.call("PUT", base + iname, content=(index[i : i + 100] for i in range(0, len(index), 100)))
    assert indexed.status_code == 200 and indexed.json()["created"] is True
    empty = agent.call("PUT", base + "config", content=(b"" for _ in range(1)))
    assert empty.status_code == 422 and empty.json()["code"] == "RepoUploadRejected"


def test_pack_stored_but_not_recorded_is_not_reported_as_held(vault: VaultServer, agent: Agent) -> None:
    pid, pack, entries = make_pack()
    assert agent.put(pack_name(pid), pack).status_code == 200
    # As if the vault stopped between storing the pack and recording it: the file is there,
    # the row is not. Asked before a re-send, the vault must say it lacks the pack.
    with vault.db.write() as s:
        s.execute(delete(Pack).where(Pack.machine_id == agent.machine_id, Pack.pack_id == pid))
    with pytest.raises(KluisError) as info:
        agent.store().stat(pack_name(pid))
    assert info.value.code == "StoreObjectNotFound"
    again = agent.put(pack_name(pid), pack)
    assert again.status_code == 200 and again.json()["created"] is True
    assert agent.store().stat(pack_name(pid)).size == len(pack)
    name, data = make_index(entries)
    assert agent.put(name, data).status_code == 200


def test_index_naming_a_missing_pack_is_refused(vault: VaultServer, agent: Agent) -> None:
    _, _, entries = make_pack()  # the pack itself is never uploaded
    name, data = make_index(entries)
    response = agent.put(name, data)
    assert response.status_code == 422 and response.json()["code"] == "RepoUploadRejected"
    assert "does not hold" in response.json()["message"]
    assert _count(vault, IndexFile, machine_id=agent.machine_id, index_id=name.split("/")[1]) == 0
    assert _count(vault, Blob, machine_id=agent.machine_id, blob_id=entries[0].id) == 0
    bad = agent.put(index_name(secrets.token_bytes(32)), data)
    assert bad.status_code == 422 and bad.json()["code"] == "RepoUploadChecksumMismatch"


def test_point_referencing_a_missing_blob_is_refused_and_nothing_recorded(
    vault: VaultServer, agent: Agent
) -> None:
    pid, pack, entries = make_pack()
    name, index = make_index(entries)
    assert agent.put(pack_name(pid), pack).status_code == 200
    assert agent.put(name, index).status_code == 200
    missing = secrets.token_bytes(32)
    point_id, refs, point = make_point([e.id for e in entries] + [missing])
    assert agent.put(refs_name(point_id), refs).status_code == 200
    response = agent.put(point_name(point_id), point)
    assert response.status_code == 422 and response.json()["code"] == "RepoPointIncomplete"
    assert response.json()["params"]["blob"] == missing.hex()
    assert _count(vault, RecoveryPoint, id=point_id) == 0
    head = agent.call("HEAD", ROOT.format(agent.machine_id) + f"/objects/{point_name(point_id)}")
    assert head.status_code == 404


def test_a_point_of_many_blobs_is_checked_in_full(vault: VaultServer, agent: Agent) -> None:
    """The check runs in chunks of ids: a missing blob past the first chunks is still found."""
    pid, pack, entries = make_pack(count=4_500, size=8)
    name, index = make_index(entries)
    assert agent.put(pack_name(pid), pack).status_code == 200
    assert agent.put(name, index).status_code == 200
    ids = sorted(e.id for e in entries)
    missing = b"\xff" * 31 + b"\x00"  # sorts after every stored id: in the last chunk
    point_id, refs, point = make_point([*ids, missing])
    assert agent.put(refs_name(point_id), refs).status_code == 200
    response = agent.put(point_name(point_id), point)
    assert response.status_code == 422 and response.json()["code"] == "RepoPointIncomplete"
    assert response.json()["params"]["blob"] == missing.hex()
    assert response.json()["params"]["count"] == 1
    point_id, refs, point = make_point(ids)
    assert agent.put(refs_name(point_id), refs).status_code == 200
    assert agent.put(point_name(point_id), point).status_code == 200
    assert _count(vault, RecoveryPoint, id=point_id) == 1


def _indexed_blobs(agent: Agent) -> tuple[bytes, list[bytes]]:
    pid, pack, entries = make_pack()
    name, index = make_index(entries)
    assert agent.put(pack_name(pid), pack).status_code == 200
    assert agent.put(name, index).status_code == 200
    return pid, [e.id for e in entries]


def test_point_whose_blobs_sit_in_a_deleted_pack_is_refused(vault: VaultServer, agent: Agent) -> None:
    pid, blobs = _indexed_blobs(agent)
    # The pack is gone while its blob rows still say live (say GC stopped between the two):
    # the blob rows alone must not be taken for data the vault holds.
    with vault.db.write() as s:
        s.execute(
            update(Pack)
            .where(Pack.machine_id == agent.machine_id, Pack.pack_id == pid)
            .values(deleted_at=utcnow())
        )
    have = agent.call("POST", ROOT.format(agent.machine_id) + "/have", json={"ids": [b.hex() for b in blobs]})
    assert have.status_code == 200 and have.json()["have"] == []
    point_id, refs, point = make_point(blobs)
    assert agent.put(refs_name(point_id), refs).status_code == 200
    response = agent.put(point_name(point_id), point)
    assert response.status_code == 422 and response.json()["code"] == "RepoPointIncomplete"
    assert _count(vault, RecoveryPoint, id=point_id) == 0


def test_point_whose_header_counts_other_references_is_refused(vault: VaultServer, agent: Agent) -> None:
    _, blobs = _indexed_blobs(agent)
    point_id, _full, point = make_point(blobs)  # the header counts all of them
    cut = encode_refs(blobs[:1])  # the list names only one: the rest would go unchecked
    assert agent.put(refs_name(point_id), cut).status_code == 200
    response = agent.put(point_name(point_id), point)
    assert response.status_code == 422 and response.json()["code"] == "RepoUploadRejected"
    assert "counts" in response.json()["message"]
    assert _count(vault, RecoveryPoint, id=point_id) == 0


def test_point_without_its_reference_list_is_refused(vault: VaultServer, agent: Agent) -> None:
    point_id, _refs, point = make_point([])
    response = agent.put(point_name(point_id), point)
    assert response.status_code == 422 and "refs/" in response.json()["message"]
    assert _count(vault, RecoveryPoint, id=point_id) == 0


def test_point_header_must_name_the_point(vault: VaultServer, agent: Agent) -> None:
    _point_id, refs, point = make_point([])
    other = secrets.token_hex(16)
    agent.put(refs_name(other), refs)
    response = agent.put(point_name(other), point)
    assert response.status_code == 422 and response.json()["code"] == "RepoUploadRejected"


def test_config_once_and_keys(vault: VaultServer, agent: Agent) -> None:
    first = agent.put("config", b'{"version": 1, "id": "abc"}')
    assert first.status_code == 200
    assert agent.put("config", b'{"version": 1, "id": "abc"}').json()["created"] is False
    conflict = agent.put("config", b'{"version": 1, "id": "other"}')
    assert conflict.status_code == 409 and conflict.json()["code"] == "RepoObjectConflict"
    assert agent.put("config", b"not json").status_code == 422
    assert agent.put("keys/0123abcd", b'{"version": 1}').status_code == 200
    keys = agent.call("GET", f"/api/v1/machines/{agent.machine_id}/keys").json()
    assert "0123abcd" in {k["id"] for k in keys}


@pytest.mark.parametrize(
    "name", ["other/thing", "data/ab/" + "cd" * 32, "index/xyz", "points/a b", "../config"]
)
def test_unknown_names_are_refused(agent: Agent, name: str) -> None:
    response = agent.put(name, b"{}")
    assert response.status_code in (404, 422), response.text
    if response.status_code == 422:
        assert response.json()["code"] == "ValidationFailed"


def test_machines_cannot_delete(agent: Agent) -> None:
    response = agent.call("DELETE", ROOT.format(agent.machine_id) + "/objects/config")
    assert response.status_code == 403 and response.json()["code"] == "RepoDeleteNotAllowed"


def test_upload_size_limit(make_vault: Callable[..., VaultServer]) -> None:
    small = make_vault(pack_size_limit=4096).start()
    try:
        agent = Agent(small).registered()
        pid, pack, _ = make_pack(count=2, size=3000)
        response = agent.put(pack_name(pid), pack)
        assert response.status_code == 413 and response.json()["code"] == "RepoUploadTooLarge"
        # Without a Content-Length (chunked upload) the limit holds while streaming.
        chunks = (pack[i : i + 1000] for i in range(0, len(pack), 1000))
        streamed = agent.call(
            "PUT", ROOT.format(agent.machine_id) + f"/objects/{pack_name(pid)}", content=chunks
        )
        assert streamed.status_code == 413
        assert not list(
            small.ok("GET", ROOT.format(agent.machine_id) + "/objects", params={"prefix": "data/"})
        )
    finally:
        small.stop()


def test_have_and_ranges(vault: VaultServer, agent: Agent) -> None:
    pid, pack, entries = make_pack(count=2, size=5000)
    agent.put(pack_name(pid), pack)
    name, index = make_index(entries)
    agent.put(name, index)
    unknown = secrets.token_bytes(32).hex()
    answer = agent.call(
        "POST", ROOT.format(agent.machine_id) + "/have", json={"ids": [entries[0].id.hex(), unknown]}
    ).json()
    assert answer == {"have": [entries[0].id.hex()]}
    url = ROOT.format(agent.machine_id) + f"/objects/{pack_name(pid)}"
    part = agent.call("GET", url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == pack[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(pack)}"
    assert agent.call("GET", url, headers={"Range": "bytes=-5"}).content == pack[-5:]
    assert agent.call("GET", url, headers={"Range": f"bytes={len(pack)}-"}).status_code == 416
    whole = agent.call("GET", url)
    assert whole.status_code == 200 and whole.content == pack
    too_many = agent.call("POST", ROOT.format(agent.machine_id) + "/have", json={"ids": ["00"] * 10001})
    assert too_many.status_code == 422


def test_reads_by_operator_and_not_by_other_machines(vault: VaultServer, agent: Agent) -> None:
    agent.put("config", b'{"version": 1, "id": "abc"}')
    url = ROOT.format(agent.machine_id) + "/objects/config"
    assert vault.request("GET", url, token=vault.token_for("Operator")).status_code == 200
    stranger = Agent(vault).registered()
    denied = stranger.call("GET", url)
    assert denied.status_code == 403 and denied.json()["code"] == "RoleForbidden"


def test_vault_store_client(vault: VaultServer, agent: Agent) -> None:
    store = agent.store()
    try:
        pid, pack, entries = make_pack(count=2, size=2000)
        store.put(pack_name(pid), memoryview(pack))
        assert store.get(pack_name(pid)) == pack
        assert store.get(pack_name(pid), 100, 50) == pack[100:150]
        assert store.get(pack_name(pid), len(pack) - 5, 100) == pack[-5:]
        assert store.get(pack_name(pid), len(pack) + 10) == b""
        assert store.get(pack_name(pid), 5, 0) == b""
        assert store.stat(pack_name(pid)).size == len(pack)
        # A buffer body larger than one send slice (1 MiB) arrives whole and checked.
        big_id, big, _ = make_pack(count=3, size=600_000)
        store.put(pack_name(big_id), memoryview(bytearray(big)))
        assert len(big) > 1024 * 1024 and store.get(pack_name(big_id)) == big
        assert store.exists(pack_name(pid)) and not store.exists("data/00/" + "00" * 32)
        with pytest.raises(KluisError) as missing:
            store.get("index/" + "11" * 32)
        assert missing.value.code == "StoreObjectNotFound"
        assert pack_name(pid) in {o.name for o in store.list("data/")}
        name, index = make_index(entries)
        store.put(name, index)
        assert store.have([entries[0].id, b"\x01" * 32]) == {entries[0].id}
        with pytest.raises(KluisError) as refused:
            store.put(pack_name(b"\x02" * 32), pack)
        assert refused.value.code == "RepoUploadChecksumMismatch"
        with pytest.raises(KluisError) as no_delete:
            store.delete("config")
        assert no_delete.value.code == "RepoDeleteNotAllowed"
    finally:
        store.close()


def test_vault_store_lists_in_pages(vault: VaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = Agent(vault).registered()
    store = agent.store()
    names = set()
    for _ in range(7):
        point_id, refs, _ = make_point([])
        store.put(refs_name(point_id), refs)
        names.add(refs_name(point_id))
    monkeypatch.setattr("kluis.stores.vault.PAGE", 3)
    assert {o.name for o in store.list("refs/")} == names
    store.close()


def test_vault_store_connection_errors_are_catalogued() -> None:
    from kluis.stores.vault import VaultStore
    from tests.support.ports import closed_port

    store = VaultStore(f"http://127.0.0.1:{closed_port()}", "m", "kluis_m_x", retries=2, backoff=0.01)
    with pytest.raises(KluisError) as info:
        store.stat("config")
    assert info.value.code == "100050"
    store.close()


def test_engine_repository_over_the_vault(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    store = agent.store()
    try:
        repo, _wrapped, _kek = Repository.init(store, "correct horse")
        blobs = [repo.save_blob(BlobType.DATA, secrets.token_bytes(3000 + i)) for i in range(5)]
        point_id = repo.save_point("files", {"root": "none"}, set(blobs))
        assert vault.ok("GET", f"/api/v1/points/{point_id}")["refs"] == 5
        again = Repository.open(store, passphrase="correct horse")
        header, manifest = again.load_point(point_id)
        assert manifest == {"root": "none"} and header["kind"] == "files"
        assert len(again.load_blob(blobs[2])) == 3002
    finally:
        store.close()


def test_raw_reads_serve_ranges_and_hand_back_errors(vault: VaultServer) -> None:
    """Object reads over http.client give the bytes httpx gives; errors go the usual way."""
    from kluis.stores.vault import RawTransfers, VaultStore

    agent = Agent(vault).registered()
    plain = agent.store()
    seen: list[int] = []
    auth = {"Authorization": f"Bearer {agent.token}"}
    raw = RawTransfers(vault.url, auth, timeout=10, before_body=seen.append)
    fast = VaultStore(vault.url, agent.machine_id, agent.token, retries=2, backoff=0.05, raw=raw)
    try:
        pid, data, _ = make_pack(count=3, size=100_000)
        name = pack_name(pid)
        plain.put(name, data)
        size = len(data)
        for offset, length in ((0, None), (0, 1), (1000, 65_536), (size - 1, 1), (123, 200_000)):
            assert fast.get(name, offset, length) == plain.get(name, offset, length)
        assert fast.get(name) == data
        assert raw.served == 6 and raw.declined == 0
        assert seen[:2] == [size, 1]  # the bandwidth hook hears each body's length first
        # A missing object: the raw path declines, the client raises the catalog error.
        with pytest.raises(KluisError) as info:
            fast.get(pack_name(secrets.token_bytes(32)))
        assert info.value.code == "StoreObjectNotFound" and raw.declined == 1
        # A range past the end: no bytes, as through httpx.
        assert fast.get(name, size + 10, 10) == b"" == plain.get(name, size + 10, 10)
        # A refused token: declined too, and the client's error is the vault's.
        bad = RawTransfers(vault.url, {"Authorization": "Bearer kluis_m_wrong"}, timeout=10)
        assert bad.get(fast._object(name), {}) is None and bad.declined == 1
        bad.close()
    finally:
        fast.close()
        plain.close()


def test_raw_uploads_store_packs_and_hand_back_refusals(vault: VaultServer) -> None:
    """Packs sent over http.client land as through httpx; a refused one raises the vault's error."""
    from kluis.stores.vault import RawTransfers, VaultStore

    agent = Agent(vault).registered()
    raw = RawTransfers(vault.url, {"Authorization": f"Bearer {agent.token}"}, timeout=10)
    fast = VaultStore(vault.url, agent.machine_id, agent.token, retries=2, backoff=0.05, raw=raw)
    try:
        pid, data, _ = make_pack(count=4, size=200_000)
        name = pack_name(pid)
        buf = bytearray(data) + bytearray(b"spare room the engine's buffer has")
        fast.put(name, memoryview(buf)[: len(data)])  # a view of a larger, reused buffer
        assert raw.served == 1 and raw.declined == 0
        assert fast.get(name) == data and fast.stat(name).size == len(data)  # the get is raw too
        fast.put(name, data)  # a retried upload of a held pack is accepted again
        assert raw.served == 3
        # Several packs on one kept-alive connection.
        for _ in range(3):
            other, body, _ = make_pack(count=2, size=50_000)
            fast.put(pack_name(other), body)
        assert raw.served == 6 and len(raw._all) == 1
        # A pack whose bytes do not match its name: the raw path declines, and the upload
        # through httpx raises the vault's catalog error; nothing is stored.
        wrong = pack_name(secrets.token_bytes(32))
        with pytest.raises(KluisError) as info:
            fast.put(wrong, data)
        assert info.value.code == "RepoUploadChecksumMismatch" and raw.declined == 1
        with pytest.raises(KluisError) as missing:
            fast.stat(wrong)
        assert missing.value.code == "StoreObjectNotFound"
        # The vault closes the kept-alive connection: the next upload opens a new one
        # instead of failing part-way and sending the pack twice.
        conn = raw._local.conn
        conn.sock.shutdown(socket.SHUT_RD)
        again, body, _ = make_pack(count=2, size=50_000)
        fast.put(pack_name(again), body)
        assert raw.served == 7 and raw.declined == 1 and raw._local.conn is not conn
    finally:
        fast.close()

"""What only the Azure Blob store promises, against a real Azurite: errors, keys, prefixes, paging."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient

from kluis.catalog import KluisError
from kluis.stores import open_store
from kluis.stores.azure import AzureBlobStore
from tests.stores.helpers import assert_unavailable, azure_url, every_operation, unique
from tests.support.azurite import AzuriteServer
from tests.support.ports import closed_port

#: A well-formed key that is not the account's (base64 of "not the key").
WRONG_KEY = "bm90IHRoZSBrZXk="


def use_account_key(monkeypatch: pytest.MonkeyPatch, server: AzuriteServer, key: str) -> None:
    """Credentials the second way: AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY."""
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", server.account_name)
    monkeypatch.setenv("AZURE_STORAGE_KEY", key)


def test_unavailable_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "devstoreaccount1")
    monkeypatch.setenv("AZURE_STORAGE_KEY", WRONG_KEY)
    port = closed_port()
    store = open_store(
        f"azure://gone?account_url=http://127.0.0.1:{port}/devstoreaccount1&retries=0&connect_timeout=1"
    )
    started = time.monotonic()
    for label, call in every_operation(store):
        error = assert_unavailable(call, "connection refused")
        assert error.params["store"] == store.url, label
    assert time.monotonic() - started < 10


def test_unavailable_when_server_hangs(monkeypatch: pytest.MonkeyPatch, silent_port: int) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "devstoreaccount1")
    monkeypatch.setenv("AZURE_STORAGE_KEY", WRONG_KEY)
    store = open_store(
        f"azure://hung?account_url=http://127.0.0.1:{silent_port}/devstoreaccount1&retries=0&read_timeout=0.3"
    )
    started = time.monotonic()
    assert_unavailable(lambda: store.get("x"), "timed out")
    assert_unavailable(lambda: store.put("x", b"1"), "timed out")
    assert time.monotonic() - started < 5


def test_keys_are_enforced(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> None:
    container = unique()
    good = open_store(azure_url(azurite, container, create="1"))
    good.put("obj", b"secret data")

    use_account_key(monkeypatch, azurite, WRONG_KEY)
    wrong = open_store(azure_url(azurite, container))
    for _label, call in every_operation(wrong):
        assert_unavailable(call, "access denied")
    assert_unavailable(lambda: wrong.get("obj"), "AuthorizationFailure")
    assert_unavailable(lambda: open_store(azure_url(azurite, container, create="1")), "access denied")
    assert good.get("obj") == b"secret data"


def test_no_credentials_at_all(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    with pytest.raises(KluisError) as info:
        open_store(azure_url(azurite, unique()))
    assert info.value.code == "StoreUnavailable"
    assert "AZURE_STORAGE_CONNECTION_STRING" in info.value.message


def test_account_and_key_variables_work(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> None:
    container = unique()
    by_connection_string = open_store(azure_url(azurite, container, create="1"))
    by_connection_string.put("obj", b"1")
    use_account_key(monkeypatch, azurite, azurite.account_key)
    by_account_key = open_store(azure_url(azurite, container))
    assert by_account_key.get("obj") == b"1"


def test_connection_string_names_the_endpoint(azurite: AzuriteServer) -> None:
    # No account_url in the URL: the BlobEndpoint of the connection string is used.
    store = open_store(f"azure://{unique()}?create=1")
    assert azurite.account_url in store.url
    store.put("obj", b"2")
    assert store.get("obj") == b"2"


def test_missing_container_without_create(azurite: AzuriteServer) -> None:
    store = open_store(azure_url(azurite, unique("missing-")))
    for _label, call in every_operation(store):
        assert_unavailable(call, "does not exist", "create=1")


def test_write_refused_by_server_is_write_failed(azurite: AzuriteServer) -> None:
    # A blob under someone else's lease cannot be overwritten or deleted: the server says no.
    container = unique()
    store = open_store(azure_url(azurite, container, create="1"))
    store.put("locked", b"v1")
    service = BlobServiceClient(
        azurite.account_url, credential=AzureNamedKeyCredential(azurite.account_name, azurite.account_key)
    )
    lease = service.get_blob_client(container, "locked").acquire_lease(lease_duration=-1)
    try:
        refused: list[Callable[[], object]] = [
            lambda: store.put("locked", b"v2"),
            lambda: store.delete("locked"),
        ]
        for call in refused:
            with pytest.raises(KluisError) as info:
                call()
            assert info.value.code == "StoreWriteFailed"
            assert "LeaseIdMissing" in info.value.message
        assert store.get("locked") == b"v1"
    finally:
        lease.break_lease(lease_break_period=0)
        service.close()


def test_container_root_and_prefixes_do_not_mix(azurite: AzuriteServer) -> None:
    container = unique()
    root = open_store(azure_url(azurite, container, create="1"))
    left = open_store(azure_url(azurite, container, prefix="tenant/left"))
    right = open_store(azure_url(azurite, container, prefix="tenant/right"))
    left.put("config", b"L")
    right.put("config", b"R")
    root.put("config", b"root")
    assert left.get("config") == b"L"
    assert right.get("config") == b"R"
    assert sorted(o.name for o in left.list()) == ["config"]
    assert sorted(o.name for o in root.list()) == ["config", "tenant/left/config", "tenant/right/config"]
    left.delete("config")
    assert right.exists("config") and root.exists("config")


def test_url_reopens_the_same_store_without_secrets(azurite: AzuriteServer) -> None:
    store = open_store(azure_url(azurite, unique(), prefix="p/q", create="1", retries="2"))
    store.put("obj", b"1")
    assert azurite.account_key not in store.url
    assert "create" not in store.url
    again = open_store(store.url)
    assert again.url == store.url
    assert again.get("obj") == b"1"


def test_list_follows_continuation_pages(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> None:
    store = AzureBlobStore(
        unique(),
        "p",
        account_url=azurite.account_url,
        credential=AzureNamedKeyCredential(azurite.account_name, azurite.account_key),
        create=True,
        page_size=2,
    )
    names = {f"pack/{i:02d}": bytes(i) for i in range(7)}
    for name, data in names.items():
        store.put(name, data)
    listings: list[str] = []
    send = RequestsTransport.send

    def counting_send(self: RequestsTransport, request: Any, **kwargs: Any) -> Any:
        if "comp=list" in request.url:
            listings.append(request.url)
        return send(self, request, **kwargs)

    monkeypatch.setattr(RequestsTransport, "send", counting_send)
    assert {o.name: o.size for o in store.list("pack/")} == {n: len(d) for n, d in names.items()}
    assert len(listings) == 4  # 7 blobs, 2 per page

"""What only the S3 store promises, against a real SeaweedFS: errors, keys, prefixes, paging."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kluis.stores import open_store
from kluis.stores.s3 import S3Store
from tests.stores.helpers import S3_BUCKET, assert_unavailable, every_operation, s3_url, unique
from tests.support.ports import closed_port
from tests.support.s3server import S3Server


def test_unavailable_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "something")
    port = closed_port()
    store = open_store(f"s3://kluis-gone?endpoint=http://127.0.0.1:{port}&retries=0&connect_timeout=1")
    started = time.monotonic()
    for label, call in every_operation(store):
        error = assert_unavailable(call, "could not connect", f"127.0.0.1:{port}")
        assert error.params["store"] == store.url, label
    assert time.monotonic() - started < 10


def test_unavailable_when_server_hangs(monkeypatch: pytest.MonkeyPatch, silent_port: int) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "something")
    store = open_store(f"s3://kluis-hung?endpoint=http://127.0.0.1:{silent_port}&retries=0&read_timeout=0.3")
    started = time.monotonic()
    assert_unavailable(lambda: store.get("x"), "timeout")
    assert_unavailable(lambda: store.put("x", b"1"), "timeout")
    assert time.monotonic() - started < 5


def test_keys_are_enforced(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = unique()
    good = open_store(s3_url(s3, prefix=prefix, create="1"))
    good.put("obj", b"secret data")
    url = s3_url(s3, prefix=prefix)

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    wrong_secret = open_store(url)
    for _label, call in every_operation(wrong_secret):
        assert_unavailable(call, "access denied")
    assert_unavailable(lambda: wrong_secret.get("obj"), "SignatureDoesNotMatch")
    # Opening with create=1 asks the server about the bucket, so it fails right there.
    assert_unavailable(lambda: open_store(s3_url(s3, prefix=prefix, create="1")), "access denied")

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    assert_unavailable(lambda: open_store(url).put("obj", b"overwritten"), "InvalidAccessKeyId")
    assert good.get("obj") == b"secret data"


def test_no_keys_at_all() -> None:
    # The autouse fixture removed every AWS_* variable and the config files.
    store = open_store(f"s3://kluis-nokeys?endpoint=http://127.0.0.1:{closed_port()}&retries=0")
    assert_unavailable(lambda: store.get("x"), "no S3 credentials", "AWS_ACCESS_KEY_ID")


def test_missing_bucket_without_create(s3: S3Server) -> None:
    store = open_store(s3_url(s3, bucket=unique("missing-")))
    for _label, call in every_operation(store):
        assert_unavailable(call, "does not exist", "create=1")


def test_bucket_root_and_prefixes_do_not_mix(s3: S3Server) -> None:
    bucket = unique("root-")
    root = open_store(s3_url(s3, bucket=bucket, create="1"))
    left = open_store(s3_url(s3, bucket=bucket, prefix="tenant/left"))
    right = open_store(s3_url(s3, bucket=bucket, prefix="tenant/right"))
    left.put("config", b"L")
    right.put("config", b"R")
    root.put("config", b"root")
    assert left.get("config") == b"L"
    assert right.get("config") == b"R"
    assert sorted(o.name for o in left.list()) == ["config"]
    assert sorted(o.name for o in root.list()) == ["config", "tenant/left/config", "tenant/right/config"]
    assert sorted(o.name for o in root.list("tenant/")) == ["tenant/left/config", "tenant/right/config"]
    left.delete("config")
    assert right.exists("config") and root.exists("config")


def test_url_reopens_the_same_store_without_secrets(s3: S3Server) -> None:
    store = open_store(s3_url(s3, prefix="p/q", create="1", region="us-east-1", retries="2"))
    store.put("obj", b"1")
    assert s3.secret_key not in store.url and s3.access_key not in store.url
    assert "create" not in store.url
    again = open_store(store.url)
    assert again.url == store.url
    assert again.get("obj") == b"1"


def test_list_follows_continuation_pages(s3: S3Server) -> None:
    prefix = unique()
    store = S3Store(
        S3_BUCKET,
        prefix,
        endpoint=s3.endpoint,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        create=True,
        page_size=2,
    )
    names = {f"pack/{i:02d}": bytes(i) for i in range(7)}
    for name, data in names.items():
        store.put(name, data)
    requests: list[str] = []

    def count(**kwargs: Any) -> None:
        requests.append("list")

    store._client.meta.events.register("before-call.s3.ListObjectsV2", count)
    assert {o.name: o.size for o in store.list("pack/")} == {n: len(d) for n, d in names.items()}
    assert len(requests) == 4  # 7 objects, 2 per page


def test_large_object_in_one_put(s3: S3Server) -> None:
    # Packs are tens of MiB and go up in one PutObject; 40 MiB keeps the test quick.
    store = open_store(s3_url(s3, prefix=unique(), create="1"))
    data = bytes(range(256)) * (40 * 4096)
    store.put("pack", data)
    assert store.stat("pack").size == len(data)
    assert store.get("pack", len(data) - 3) == data[-3:]
    assert store.get("pack") == data

"""Helpers shared by the store tests: URLs for the test servers and error assertions."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from kluis.catalog import KluisError
from kluis.stores import Store
from tests.support.azurite import AzuriteServer
from tests.support.s3server import S3Server

#: The bucket every S3 test shares; tests are kept apart by prefixes.
S3_BUCKET = "kluis-tests"


def unique(stem: str = "t") -> str:
    """A fresh lower-case name, valid as a prefix, a bucket or a container name."""
    return f"{stem}{secrets.token_hex(6)}"


def s3_url(server: S3Server, bucket: str = S3_BUCKET, prefix: str = "", **options: str) -> str:
    """An s3:// URL for ``server``."""
    query = "&".join(f"{k}={v}" for k, v in {"endpoint": server.endpoint, **options}.items())
    path = f"/{prefix}" if prefix else ""
    return f"s3://{bucket}{path}?{query}"


def azure_url(server: AzuriteServer, container: str, prefix: str = "", **options: str) -> str:
    """An azure:// URL for ``server``."""
    query = "&".join(f"{k}={v}" for k, v in {"account_url": server.account_url, **options}.items())
    path = f"/{prefix}" if prefix else ""
    return f"azure://{container}{path}?{query}"


def every_operation(store: Store) -> list[tuple[str, Callable[[], object]]]:
    """Each contract operation once, as (label, call)."""
    return [
        ("put", lambda: store.put("x/y", b"data")),
        ("get", lambda: store.get("x/y")),
        ("get range", lambda: store.get("x/y", 1, 2)),
        ("stat", lambda: store.stat("x/y")),
        ("list", lambda: list(store.list("x/"))),
        ("delete", lambda: store.delete("x/y")),
    ]


def assert_unavailable(call: Callable[[], object], *needles: str) -> KluisError:
    """``call`` raises StoreUnavailable whose message holds every needle (case-insensitive)."""
    with pytest.raises(KluisError) as info:
        call()
    assert info.value.code == "StoreUnavailable", info.value.message
    for needle in needles:
        assert needle.lower() in info.value.message.lower(), info.value.message
    return info.value

"""Storage backends behind one small contract (see ``base.Store``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from kluis.catalog import KluisError
from kluis.stores.base import ObjectInfo, Store, check_name
from kluis.stores.local import LocalStore

__all__ = ["LocalStore", "ObjectInfo", "Store", "check_name", "open_store"]


def open_store(url: str) -> Store:
    """Open a store from its URL: a plain path or ``file://``, ``s3://``, ``azure://``."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = parts.path if parts.scheme else url
        if not path:
            raise KluisError("StoreUrlInvalid", url=url, reason="no path")
        return LocalStore(path)
    if parts.scheme == "s3":
        from kluis.stores.s3 import S3Store

        return S3Store.from_url(url)
    if parts.scheme == "azure":
        from kluis.stores.azure import AzureBlobStore

        return AzureBlobStore.from_url(url)
    raise KluisError("StoreUrlInvalid", url=url, reason=f"unknown scheme {parts.scheme!r}")

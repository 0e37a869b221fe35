"""A store in an Azure Blob Storage container (or Azurite, its emulator).

URL form (see docs/stores.md)::

    azure://CONTAINER[/PREFIX][?account_url=URL&create=1&retries=N
                                &connect_timeout=SECONDS&read_timeout=SECONDS]

Credentials never appear in the URL. They come from
``AZURE_STORAGE_CONNECTION_STRING`` (account key or shared access signature,
and the blob endpoint when it names one) or from ``AZURE_STORAGE_ACCOUNT`` with
``AZURE_STORAGE_KEY``. ``account_url`` in the URL wins over the endpoint the
environment implies.

Uploading a block blob is atomic: a single Put Blob, or for large objects staged
blocks that become visible together when the block list is committed. Azure
Blob Storage is strongly consistent for reads and listings after a write.
Azure SDK clients are thread-safe, so one container client serves every thread.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from urllib.parse import quote, urlencode, urlsplit

from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry

from kluis.catalog import KluisError
from kluis.stores.base import ObjectInfo, Store, check_name
from kluis.stores.urlopts import UrlOptions, invalid, prefix_from_path

DEFAULT_RETRIES = 4
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
LIST_PAGE_SIZE = 1000
ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT = "AZURE_STORAGE_ACCOUNT"
ENV_KEY = "AZURE_STORAGE_KEY"

_OPTIONS = frozenset({"account_url", "create", "retries", "connect_timeout", "read_timeout"})
# 3-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit, no '--'.
_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_DENIED_STATUS = frozenset({401, 403})

Credential = AzureNamedKeyCredential | AzureSasCredential


def parse_connection_string(text: str) -> dict[str, str]:
    """``Key=Value;...`` as a dict with lower-case keys (values may contain '=')."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key:
            fields[key.strip().lower()] = value.strip()
    return fields


def credentials_from_env(account_url: str | None) -> tuple[str | None, Credential | None]:
    """The blob endpoint and credential the environment gives, the URL's account_url winning."""
    conn = os.environ.get(ENV_CONNECTION_STRING, "").strip()
    if conn:
        fields = parse_connection_string(conn)
        name = fields.get("accountname")
        credential: Credential | None = None
        if name and fields.get("accountkey"):
            credential = AzureNamedKeyCredential(name, fields["accountkey"])
        elif fields.get("sharedaccesssignature"):
            credential = AzureSasCredential(fields["sharedaccesssignature"])
        endpoint = account_url or fields.get("blobendpoint")
        if not endpoint and name:
            protocol = fields.get("defaultendpointsprotocol", "https")
            suffix = fields.get("endpointsuffix", "core.windows.net")
            endpoint = f"{protocol}://{name}.blob.{suffix}"
        return endpoint, credential
    account = os.environ.get(ENV_ACCOUNT, "").strip()
    key = os.environ.get(ENV_KEY, "").strip()
    endpoint = account_url or (f"https://{account}.blob.core.windows.net" if account else None)
    return endpoint, (AzureNamedKeyCredential(account, key) if account and key else None)


def _reason(exc: Exception) -> str:
    """A one-line reason from an Azure SDK error, without object addresses."""
    if isinstance(exc, HttpResponseError):
        first = (exc.message or "").splitlines()[0] if exc.message else ""
        return f"HTTP {exc.status_code} {_error_code(exc) or exc.reason or ''}: {first}".strip(" :.")
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"<[^>]* object at 0x[0-9a-f]+>:?\s*", "", text).rstrip(".")


def _error_code(exc: HttpResponseError) -> str:
    """The service's error code as text (the SDK gives an enum member for codes it knows)."""
    code = getattr(exc, "error_code", None)  # set by the storage SDK, not declared by azure-core
    return str(getattr(code, "value", code) or "")


class AzureBlobStore(Store):
    """Objects as block blobs ``PREFIX/name`` in one container."""

    remote = True

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        account_url: str,
        credential: Credential | None,
        create: bool = False,
        retries: int = DEFAULT_RETRIES,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        """Open (and with ``create`` make) a container. ``credential`` None means anonymous."""
        self.container = container
        self.prefix = prefix.strip("/")
        self._key_prefix = f"{self.prefix}/" if self.prefix else ""
        self._page_size = page_size
        options = {"account_url": account_url}
        if retries != DEFAULT_RETRIES:
            options["retries"] = str(retries)
        if connect_timeout != DEFAULT_CONNECT_TIMEOUT:
            options["connect_timeout"] = f"{connect_timeout:g}"
        if read_timeout != DEFAULT_READ_TIMEOUT:
            options["read_timeout"] = f"{read_timeout:g}"
        path = f"/{quote(self.prefix, safe='/')}" if self.prefix else ""
        self.url = f"azure://{container}{path}?{urlencode(options, safe=':/', quote_via=quote)}"
        self._service = BlobServiceClient(
            account_url,
            credential=credential,
            # The SDK's default waits 15 s and more between tries; a store should fail within a minute.
            retry_policy=ExponentialRetry(
                initial_backoff=1, increment_base=2, retry_total=retries, random_jitter_range=1
            ),
            connection_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._container: ContainerClient = self._service.get_container_client(container)
        if create:
            self._create_container()

    @classmethod
    def from_url(cls, url: str) -> AzureBlobStore:
        """Open a store from ``azure://CONTAINER[/PREFIX][?options]``; StoreUrlInvalid when malformed."""
        parts = urlsplit(url)
        if parts.scheme != "azure":
            raise invalid(url, "the scheme must be azure://")
        if parts.fragment:
            raise invalid(url, "a '#' fragment is not allowed")
        if "@" in parts.netloc:
            raise invalid(url, f"credentials do not belong in the URL; set {ENV_CONNECTION_STRING}")
        container = parts.netloc
        if not container:
            raise invalid(url, "no container name")
        if not _CONTAINER_RE.match(container):
            raise invalid(url, f"{container!r} is not a valid container name (3-63 of a-z, 0-9, '-')")
        options = UrlOptions(url, parts.query, _OPTIONS)
        given = (
            options.http_url("account_url", acc, hint=f"; use {ENV_CONNECTION_STRING}")
            if (acc := options.get("account_url"))
            else None
        )
        endpoint, credential = credentials_from_env(given)
        if not endpoint:
            raise invalid(
                url,
                f"no storage account: add account_url=... or set {ENV_CONNECTION_STRING} or {ENV_ACCOUNT}",
            )
        if credential is None:
            raise KluisError(
                "StoreUnavailable",
                store=url,
                reason=f"no Azure credentials; set {ENV_CONNECTION_STRING} or {ENV_ACCOUNT} and {ENV_KEY}",
            )
        return cls(
            container,
            prefix_from_path(url, parts.path),
            account_url=endpoint,
            credential=credential,
            create=options.flag("create"),
            retries=int(options.number("retries", DEFAULT_RETRIES, integer=True)),
            connect_timeout=options.number("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            read_timeout=options.number("read_timeout", DEFAULT_READ_TIMEOUT),
        )

    # -- errors ---------------------------------------------------------------

    def _unavailable(self, reason: str) -> KluisError:
        return KluisError("StoreUnavailable", store=self.url, reason=reason)

    def _translate(self, exc: AzureError, name: str | None = None, *, write: bool = False) -> KluisError:
        """The catalog error for an Azure SDK failure."""
        if not isinstance(exc, HttpResponseError):
            return self._unavailable(_reason(exc))  # could not connect, timed out, connection reset
        if _error_code(exc) == "ContainerNotFound":
            return self._unavailable(f"container {self.container!r} does not exist (add create=1 to the URL)")
        if exc.status_code in _DENIED_STATUS:
            return self._unavailable(f"access denied ({_reason(exc)}); check the account key or SAS")
        if name is not None and not write and exc.status_code == 404:
            return self.not_found(name)
        if write:
            return KluisError("StoreWriteFailed", name=name, store=self.url, reason=_reason(exc))
        return self._unavailable(_reason(exc))

    # -- the contract ------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self._key_prefix + check_name(name)

    def _create_container(self) -> None:
        try:
            self._container.create_container()
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise self._translate(exc) from exc

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        key = self._key(name)
        body = data if isinstance(data, bytes) else bytes(data)
        try:
            self._container.upload_blob(key, body, length=len(body), overwrite=True)
        except AzureError as exc:
            raise self._translate(exc, name, write=True) from exc

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("negative offset or length")
        key = self._key(name)
        if length == 0:
            self.stat(name)  # still report a missing object
            return b""
        try:
            if offset == 0 and length is None:
                # A plain download: the SDK handles empty blobs, which a ranged request cannot.
                downloader = self._container.download_blob(key)
            else:
                downloader = self._container.download_blob(key, offset=offset, length=length)
            return downloader.readall()
        except HttpResponseError as exc:
            if exc.status_code == 416:
                return b""  # the blob exists but ends before offset
            raise self._translate(exc, name) from exc
        except AzureError as exc:
            raise self._translate(exc, name) from exc

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        try:
            properties = self._container.get_blob_client(key).get_blob_properties()
        except AzureError as exc:
            raise self._translate(exc, name) from exc
        return ObjectInfo(name, int(properties.size))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        skip = len(self._key_prefix)
        blobs = self._container.list_blobs(
            name_starts_with=self._key_prefix + prefix, results_per_page=self._page_size
        )
        try:
            for blob in blobs:
                if blob.name.endswith("/"):
                    continue  # folder markers some tools create; no object name ends in "/"
                yield ObjectInfo(blob.name[skip:], int(blob.size))
        except AzureError as exc:
            raise self._translate(exc) from exc

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            self._container.delete_blob(key, delete_snapshots="include")
        except HttpResponseError as exc:
            if exc.status_code == 404 and _error_code(exc) != "ContainerNotFound":
                return
            raise self._translate(exc, name, write=True) from exc
        except AzureError as exc:
            raise self._translate(exc, name, write=True) from exc

    def close(self) -> None:
        """Close the client's pooled connections."""
        self._service.close()

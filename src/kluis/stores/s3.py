"""A store in an S3 bucket: AWS S3 or an S3-compatible server (SeaweedFS, MinIO, Ceph RGW).

URL form (see docs/stores.md)::

    s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME&create=1&addressing=path|virtual|auto
                          &retries=N&connect_timeout=SECONDS&read_timeout=SECONDS]

Credentials never appear in the URL: they come from boto3's usual chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and the shared
config files, instance roles). One boto3 client is made per store; botocore
clients are thread-safe, sessions are not, so the session is used only while
constructing.

A single PutObject is atomic on S3: the object appears whole or not at all, and
S3 (and SeaweedFS) read-after-write and list-after-write are strongly consistent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from kluis.catalog import KluisError
from kluis.stores.base import ObjectInfo, Store, check_name
from kluis.stores.urlopts import UrlOptions, invalid, prefix_from_path

DEFAULT_RETRIES = 4
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_REGION = "us-east-1"
LIST_PAGE_SIZE = 1000

_OPTIONS = frozenset(
    {"endpoint", "region", "create", "addressing", "retries", "connect_timeout", "read_timeout"}
)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
        "403",
        "Forbidden",
    }
)
_RANGE_NOT_SATISFIABLE = frozenset({"InvalidRange", "416", "RequestedRangeNotSatisfiable"})


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"<[^>]* object at 0x[0-9a-f]+>:?\s*", "", text).rstrip(".")


def _reason(exc: BotoCoreError) -> str:
    """A one-line reason from a botocore error, with the socket error under it if there is one."""
    text = _one_line(exc)
    cause = getattr(exc, "kwargs", {}).get("error")
    if isinstance(cause, BaseException):
        text = f"{text} ({_one_line(cause)})"
    return text


class S3Store(Store):
    """Objects as keys ``PREFIX/name`` in one bucket."""

    remote = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        create: bool = False,
        addressing: str | None = None,
        retries: int = DEFAULT_RETRIES,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        """Open (and with ``create`` make) a bucket. Keys given here override the environment."""
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._key_prefix = f"{self.prefix}/" if self.prefix else ""
        self._page_size = page_size
        options: dict[str, str] = {}
        if endpoint:
            options["endpoint"] = endpoint
        if region:
            options["region"] = region
        if addressing:
            options["addressing"] = addressing
        if retries != DEFAULT_RETRIES:
            options["retries"] = str(retries)
        if connect_timeout != DEFAULT_CONNECT_TIMEOUT:
            options["connect_timeout"] = f"{connect_timeout:g}"
        if read_timeout != DEFAULT_READ_TIMEOUT:
            options["read_timeout"] = f"{read_timeout:g}"
        path = f"/{quote(self.prefix, safe='/')}" if self.prefix else ""
        query = f"?{urlencode(options, safe=':/', quote_via=quote)}" if options else ""
        self.url = f"s3://{bucket}{path}{query}"

        try:
            session = boto3.session.Session(
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                aws_session_token=session_token,
            )
        except BotoCoreError as exc:  # e.g. AWS_PROFILE names a profile that does not exist
            raise self._translate(exc) from exc
        self.region = region or session.region_name or DEFAULT_REGION
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # "standard" retries connection errors, throttling and 5xx with capped backoff.
            retries={"max_attempts": retries, "mode": "standard"},
            # Enough pooled connections for parallel pack uploads without waiting on the pool.
            max_pool_connections=32,
            # Path-style by default for custom endpoints: an IP or single host has no bucket subdomains.
            s3={"addressing_style": addressing or ("path" if endpoint else "auto")},
            user_agent_extra="kluis",
        )
        try:
            self._client: Any = session.client(
                "s3", endpoint_url=endpoint, region_name=self.region, config=config
            )
        except (BotoCoreError, ValueError) as exc:  # e.g. a region name that cannot be part of a host name
            raise KluisError("StoreUrlInvalid", url=self.url, reason=_one_line(exc)) from exc
        self._bucket_checked = False
        if create:
            self._create_bucket()

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        """Open a store from ``s3://BUCKET[/PREFIX][?options]``; StoreUrlInvalid when malformed."""
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise invalid(url, "the scheme must be s3://")
        if parts.fragment:
            raise invalid(url, "a '#' fragment is not allowed")
        if "@" in parts.netloc:
            raise invalid(
                url, "credentials do not belong in the URL; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )
        bucket = parts.netloc
        if not bucket:
            raise invalid(url, "no bucket name")
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise invalid(url, f"{bucket!r} is not a valid bucket name (3-63 of a-z, 0-9, '.', '-')")
        options = UrlOptions(url, parts.query, _OPTIONS)
        addressing = options.get("addressing") or None
        if addressing not in (None, "path", "virtual", "auto"):
            raise invalid(url, f"addressing must be path, virtual or auto, not {addressing!r}")
        endpoint = options.http_url("endpoint", ep) if (ep := options.get("endpoint")) else None
        region = options.get("region") or None
        if region is not None and not _REGION_RE.match(region):
            raise invalid(url, f"{region!r} is not a region name (letters, digits, '-', '_', '.')")
        return cls(
            bucket,
            prefix_from_path(url, parts.path),
            endpoint=endpoint,
            region=region,
            create=options.flag("create"),
            addressing=addressing,
            retries=int(options.number("retries", DEFAULT_RETRIES, integer=True)),
            connect_timeout=options.number("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            read_timeout=options.number("read_timeout", DEFAULT_READ_TIMEOUT),
        )

    # -- errors ---------------------------------------------------------------

    def _unavailable(self, reason: str) -> KluisError:
        return KluisError("StoreUnavailable", store=self.url, reason=reason)

    def _translate(
        self, exc: BotoCoreError | ClientError, name: str | None = None, *, write: bool = False
    ) -> KluisError:
        """The catalog error for a botocore failure."""
        if isinstance(exc, NoCredentialsError):
            return self._unavailable(
                "no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            )
        if not isinstance(exc, ClientError):
            return self._unavailable(_reason(exc))
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        detail = f"{code}: {str(error.get('Message') or 'no message').rstrip('.')}"
        if code == "NoSuchBucket":
            return self._unavailable(f"bucket {self.bucket!r} does not exist (add create=1 to the URL)")
        if code in _DENIED:
            return self._unavailable(f"access denied ({detail}); check the keys and the bucket policy")
        if name is not None and not write and code in _NOT_FOUND:
            return self.not_found(name)
        if write:
            return KluisError("StoreWriteFailed", name=name, store=self.url, reason=detail)
        return self._unavailable(detail)

    @staticmethod
    def _code(exc: ClientError) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))

    def _missing_object(self, name: str) -> KluisError:
        """After a bare 404 from HEAD: the object is missing, unless the bucket itself is."""
        if not self._bucket_checked:
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except (BotoCoreError, ClientError) as exc:
                if isinstance(exc, ClientError) and self._code(exc) in _NOT_FOUND:
                    return self._unavailable(
                        f"bucket {self.bucket!r} does not exist (add create=1 to the URL)"
                    )
                return self._translate(exc)
            self._bucket_checked = True
        return self.not_found(name)

    # -- the contract ------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self._key_prefix + check_name(name)

    def _create_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if self._code(exc) not in _NOT_FOUND:
                raise self._translate(exc) from exc
        except BotoCoreError as exc:
            raise self._translate(exc) from exc
        kwargs: dict[str, Any] = {}
        if self.region != DEFAULT_REGION:
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            # Another process may have created it between our HEAD and CREATE.
            if self._code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._translate(exc) from exc
        except BotoCoreError as exc:
            raise self._translate(exc) from exc
        self._bucket_checked = True

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        key = self._key(name)
        body = data if isinstance(data, bytes) else bytes(data)
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=body)
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, name, write=True) from exc

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("negative offset or length")
        key = self._key(name)
        if length == 0:
            self.stat(name)  # still report a missing object
            return b""
        kwargs: dict[str, Any] = {}
        ranged = offset > 0 or length is not None
        if ranged:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key, **kwargs)
            data: bytes = response["Body"].read()
        except ClientError as exc:
            if self._code(exc) in _RANGE_NOT_SATISFIABLE:
                return b""  # the object exists but ends before offset
            raise self._translate(exc, name) from exc
        except BotoCoreError as exc:
            raise self._translate(exc, name) from exc
        if ranged and "ContentRange" not in response:
            # A server that ignores Range sends the whole object: cut it here.
            data = data[offset:] if length is None else data[offset : offset + length]
        return data

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if self._code(exc) in _NOT_FOUND:
                raise self._missing_object(name) from None
            raise self._translate(exc, name) from exc
        except BotoCoreError as exc:
            raise self._translate(exc, name) from exc
        return ObjectInfo(name, int(response["ContentLength"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        skip = len(self._key_prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self._key_prefix + prefix,
            PaginationConfig={"PageSize": self._page_size},
        )
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    key: str = item["Key"]
                    # Some servers list folder markers ("a/b/"); no object name ends in "/".
                    if key.endswith("/"):
                        continue
                    yield ObjectInfo(key[skip:], int(item["Size"]))
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc) from exc

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if self._code(exc) in _NOT_FOUND:
                return  # S3 answers 204 for a missing key; some compatible servers say 404
            raise self._translate(exc, name, write=True) from exc
        except BotoCoreError as exc:
            raise self._translate(exc, name, write=True) from exc

    def close(self) -> None:
        """Close the client's pooled connections."""
        self._client.close()

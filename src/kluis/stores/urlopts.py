"""Parsing of the options in object-store URLs (``s3://…?endpoint=…&create=1``), shared by backends."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

from kluis.catalog import KluisError
from kluis.stores.base import check_name


def invalid(url: str, reason: str) -> KluisError:
    """The catalog error for a store URL that cannot be used."""
    return KluisError("StoreUrlInvalid", url=url, reason=reason)


class UrlOptions:
    """The query options of one store URL; unknown or repeated options are refused."""

    def __init__(self, url: str, query: str, allowed: Iterable[str]) -> None:
        self.url = url
        known = frozenset(allowed)
        self.values: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in known:
                raise invalid(url, f"unknown option {key!r} (known: {', '.join(sorted(known))})")
            if key in self.values:
                raise invalid(url, f"option {key!r} given twice")
            self.values[key] = value

    def get(self, key: str) -> str | None:
        """The raw value of an option, or None."""
        return self.values.get(key)

    def flag(self, key: str) -> bool:
        """A yes/no option (1/0, true/false, yes/no); absent is no."""
        value = self.values.get(key, "0").lower()
        if value in ("1", "true", "yes"):
            return True
        if value in ("0", "false", "no", ""):
            return False
        raise invalid(self.url, f"{key} must be 1 or 0, not {value!r}")

    def number(self, key: str, default: float, *, integer: bool = False) -> float:
        """A positive number (or, with ``integer``, a count of 0 or more)."""
        if key not in self.values:
            return default
        raw = self.values[key]
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            raise invalid(self.url, f"{key} must be a number, not {raw!r}") from None
        if integer and value < 0:
            raise invalid(self.url, f"{key} must be 0 or more, not {raw!r}")
        if not integer and value <= 0:
            raise invalid(self.url, f"{key} must be positive, not {raw!r}")
        return value

    def http_url(self, key: str, value: str, *, hint: str = "") -> str:
        """An http(s) endpoint option without query or credentials (they would leak into ``url``)."""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise invalid(self.url, f"{key} must be an http:// or https:// URL, not {value!r}")
        if parts.query or parts.username or parts.password:
            raise invalid(self.url, f"{key} must not carry a query or credentials{hint}")
        return value.rstrip("/")


def prefix_from_path(url: str, path: str) -> str:
    """The object-name prefix from a URL path: no leading/trailing slash, safe parts only."""
    path = unquote(path).strip("/")
    if path:
        try:
            check_name(path)
        except ValueError:
            raise invalid(url, f"prefix {path!r} has empty, '.' or '..' parts") from None
    return path

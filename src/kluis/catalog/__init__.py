"""The error catalog: every failure a user can meet, with code, causes and actions."""

from kluis.catalog.entry import CatalogEntry, Severity
from kluis.catalog.errors import KluisError
from kluis.catalog.registry import all_entries, lookup

__all__ = ["CatalogEntry", "KluisError", "Severity", "all_entries", "lookup"]

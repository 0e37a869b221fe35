"""All catalog entries, collected from the modules in ``kluis.catalog.entries``."""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from kluis.catalog.entry import CatalogEntry


@lru_cache(maxsize=1)
def entries_by_module() -> dict[str, tuple[CatalogEntry, ...]]:
    """Every entry module's name (e.g. ``jobs``) with its entries in their order."""
    from kluis.catalog import entries as pkg

    found: dict[str, tuple[CatalogEntry, ...]] = {}
    for mod_info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{pkg.__name__}.{mod_info.name}")
        found[mod_info.name] = tuple(getattr(module, "ENTRIES", ()))
    return found


@lru_cache(maxsize=1)
def all_entries() -> dict[str, CatalogEntry]:
    """Every entry by code. Two entries with one code is a programming error."""
    found: dict[str, CatalogEntry] = {}
    where: dict[str, str] = {}
    for module, entries in entries_by_module().items():
        for entry in entries:
            if entry.code in found:
                raise RuntimeError(
                    f"catalog code {entry.code} is defined twice (entries/{where[entry.code]}.py"
                    f" and entries/{module}.py)"
                )
            found[entry.code] = entry
            where[entry.code] = module
    return found


def module_of(code: str) -> str:
    """The entry module (e.g. ``jobs``) that defines ``code``."""
    for module, entries in entries_by_module().items():
        if any(entry.code == code for entry in entries):
            return module
    raise LookupError(f"no catalog entry for code {code!r}")


def lookup(code: str) -> CatalogEntry:
    """The entry for ``code``; an unknown code is a programming error, not a user's."""
    try:
        return all_entries()[code]
    except KeyError:
        raise LookupError(f"no catalog entry for code {code!r}") from None

"""All catalog entries, collected from the modules in ``kluis.catalog.entries``."""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from kluis.catalog.entry import CatalogEntry


@lru_cache(maxsize=1)
def all_entries() -> dict[str, CatalogEntry]:
    """Every entry by code. Two entries with one code is a programming error."""
    from kluis.catalog import entries as pkg

    found: dict[str, CatalogEntry] = {}
    for mod_info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{pkg.__name__}.{mod_info.name}")
        for entry in getattr(module, "ENTRIES", ()):
            if entry.code in found:
                raise RuntimeError(f"catalog code {entry.code} is defined twice")
            found[entry.code] = entry
    return found


def lookup(code: str) -> CatalogEntry:
    """The entry for ``code``; an unknown code is a programming error, not a user's."""
    try:
        return all_entries()[code]
    except KeyError:
        raise LookupError(f"no catalog entry for code {code!r}") from None

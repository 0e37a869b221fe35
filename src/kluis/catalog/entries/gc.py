"""Conditions of the vault's garbage collection (kluis.vault.gc)."""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="GarbageCollectionPlanStale",
        title="Repository changed while garbage collection was planned",
        message="Garbage collection of {repository} stopped before changing anything: the index now"
        " lists {count} blob(s) in packs the plan would remove (for example {blob} in pack {pack}).",
        causes=(
            "A backup of this machine wrote to its repository while garbage collection ran, so the"
            " rule that keeps the two apart was bypassed.",
            "Two garbage collection runs of the same repository overlapped.",
        ),
        actions=(
            "Nothing was deleted. Wait until the machine's backup jobs have finished, then run"
            " garbage collection again.",
            "If it keeps happening, check that only one vault process holds the scheduler lease.",
        ),
        http_status=409,
        exit_code=8,
        area="gc",
    ),
]

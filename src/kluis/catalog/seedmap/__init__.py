"""Every error condition in the source documents (``shared/seeds``) and where it went in Kluis.

One row per condition as a seed states it, in our words. ``code`` is the catalog
entry that covers it; ``analogue`` says what the condition becomes on Linux when the
seed's condition is specific to Windows or Azure; a condition Kluis cannot meet has no
code and says why in ``not_applicable``. ``docs/catalog-mapping.md`` and
``docs/troubleshooting-coverage.md`` are generated from this table.
"""

from __future__ import annotations

from kluis.catalog.seedmap.condition import SeedCondition
from kluis.catalog.seedmap.files_agent import FILES_AGENT_CONDITIONS
from kluis.catalog.seedmap.vm_backup import VM_BACKUP_CONDITIONS

SEED_CONDITIONS: tuple[SeedCondition, ...] = VM_BACKUP_CONDITIONS + FILES_AGENT_CONDITIONS

__all__ = ["SEED_CONDITIONS", "SeedCondition"]

"""What every part of a running vault process shares: configuration, database, store."""

from __future__ import annotations

from dataclasses import dataclass, field

from kluis.stores import Store
from kluis.vault.config import VaultConfig
from kluis.vault.db.session import Database
from kluis.vault.lease import holder_name
from kluis.vault.notify import WorkNotifier


@dataclass
class VaultContext:
    """The live objects of one vault process."""

    config: VaultConfig
    db: Database
    store: Store
    notifier: WorkNotifier = field(default_factory=WorkNotifier)
    holder: str = field(default_factory=holder_name)

    def repo_prefix(self, machine_id: str) -> str:
        """Where a machine's repository lives in the store."""
        return f"machines/{machine_id}/"

    def close(self) -> None:
        """Release database connections and the store."""
        self.db.dispose()
        self.store.close()

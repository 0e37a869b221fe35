"""The vault's database: models, sessions and migrations (SQLite or PostgreSQL)."""

from kluis.vault.db.migrate import open_database
from kluis.vault.db.session import Database

__all__ = ["Database", "open_database"]

"""Catalog entries, one module per area. Each module exposes ``ENTRIES``."""

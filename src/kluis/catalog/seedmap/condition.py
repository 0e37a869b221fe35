"""One row of the seed map: a condition as a source document states it, and its catalog entry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeedCondition:
    """One error condition of a source document and its place in the catalog."""

    seed: str
    condition: str
    code: str | None = None
    seed_code: str = ""
    analogue: str = ""
    not_applicable: str = ""


def row(seed: str, condition: str, code: str | None = None, **kw: str) -> SeedCondition:
    """A :class:`SeedCondition`, positional for the common case (the tables stay readable)."""
    return SeedCondition(seed, condition, code, **kw)

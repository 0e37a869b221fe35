"""Which parts of a recovery point a restore takes: include paths and globs."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence


def _match_parts(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Component-wise glob match; ``**`` stands for any number of components."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match_parts(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match_parts(parts[1:], pattern[1:])


def _could_lead_to(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether something below the directory ``parts`` can match ``pattern``."""
    for i, comp in enumerate(parts):
        if i >= len(pattern):
            return False
        if pattern[i] == "**":
            return True
        if not fnmatch.fnmatchcase(comp, pattern[i]):
            return False
    return len(pattern) > len(parts)


class Selection:
    """Include patterns: paths or globs relative to the point's root (``*`` stays in one component)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = [p.strip("/").split("/") for p in patterns if p.strip("/")]

    def decide(self, rel: str, is_dir: bool) -> str:
        """'all' (this and everything below), 'partial' (look inside) or 'none'."""
        if not self.patterns:
            return "all"
        parts = rel.split("/") if rel else []
        if any(_match_parts(parts, p) for p in self.patterns):
            return "all"
        if is_dir and any(_could_lead_to(parts, p) for p in self.patterns):
            return "partial"
        return "none"

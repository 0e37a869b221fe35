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
    """Include patterns: paths or globs relative to the point's root (``*`` stays in one component).

    It also remembers which patterns met something, so that a restore can say which of
    them named nothing in the point (a mistyped path would otherwise restore nothing,
    quietly).
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        given = [p for p in patterns if p.strip("/")]
        self.given = given
        self.patterns = [p.strip("/").split("/") for p in given]
        self._met = [False] * len(self.patterns)

    def decide(self, rel: str, is_dir: bool) -> str:
        """'all' (this and everything below), 'partial' (look inside) or 'none'."""
        if not self.patterns:
            return "all"
        parts = rel.split("/") if rel else []
        hits = [i for i, p in enumerate(self.patterns) if _match_parts(parts, p)]
        if hits:
            for i in hits:
                self._met[i] = True
            return "all"
        if is_dir and any(_could_lead_to(parts, p) for p in self.patterns):
            return "partial"
        return "none"

    @property
    def pending(self) -> bool:
        """Whether some pattern has matched nothing yet."""
        return not all(self._met)

    def observe(self, rel: str) -> None:
        """Note an entry that is restored as part of a folder taken whole (``decide`` is not
        asked for those): a pattern that matches it has met something."""
        parts = rel.split("/") if rel else []
        for i, p in enumerate(self.patterns):
            if not self._met[i] and _match_parts(parts, p):
                self._met[i] = True

    def unmatched(self) -> list[str]:
        """The patterns, as given, that matched nothing so far."""
        return [given for given, met in zip(self.given, self._met, strict=True) if not met]

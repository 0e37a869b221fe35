"""The shape of one catalog entry: a stable code with its message, causes and actions."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field


class Severity(enum.StrEnum):
    """How bad a condition is; warnings do not fail a job."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


def anchor_for(code: str) -> str:
    """The docs anchor of a code: lower case, only letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", code.lower()).strip("-")


@dataclass(frozen=True)
class CatalogEntry:
    """One failure a user can meet, in the catalog's words.

    ``message`` is a template: ``{name}`` placeholders are filled from the
    parameters given when the error is raised. ``causes`` and ``actions`` are in
    the order a user should consider them.
    """

    code: str
    title: str
    message: str
    causes: tuple[str, ...]
    actions: tuple[str, ...]
    severity: Severity = Severity.ERROR
    http_status: int = 400
    exit_code: int = 1
    # Where the condition comes from in the source documents, e.g. "003" (a seed file).
    seeds: tuple[str, ...] = ()
    area: str = "general"
    anchor: str = field(default="")

    def __post_init__(self) -> None:
        if not self.anchor:
            object.__setattr__(self, "anchor", anchor_for(self.code))

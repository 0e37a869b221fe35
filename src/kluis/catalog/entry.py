"""The shape of one catalog entry: a stable code with its message, causes and actions."""

from __future__ import annotations

import enum
import re
import string
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
    parameters given when the error is raised (the message names every parameter a
    caller passes; causes and actions may reuse them). ``causes`` and ``actions`` are
    in the order a user should consider them.

    ``seeds`` names the source documents the condition comes from; ``seed_codes``
    lists the source's own codes or IDs where they differ from ``code`` (a spelling
    or a second version). ``doctor_check`` names the ``kluis doctor`` check that
    detects the condition before a job fails, where there is one.
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
    seed_codes: tuple[str, ...] = ()
    doctor_check: str = ""

    def __post_init__(self) -> None:
        if not self.anchor:
            object.__setattr__(self, "anchor", anchor_for(self.code))

    @property
    def texts(self) -> tuple[tuple[str, str], ...]:
        """Every translatable string as ``(field, text)``: title, message, causes, actions."""
        out: list[tuple[str, str]] = [("title", self.title), ("message", self.message)]
        out += [(f"causes[{i}]", text) for i, text in enumerate(self.causes)]
        out += [(f"actions[{i}]", text) for i, text in enumerate(self.actions)]
        return tuple(out)

    @property
    def params(self) -> tuple[str, ...]:
        """The parameter names the message template expects, in order of appearance."""
        return placeholders(self.message)


def placeholders(template: str) -> tuple[str, ...]:
    """The ``{name}`` placeholders of a template, each once, in order of appearance."""
    seen: dict[str, None] = {}
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name != "":
            seen.setdefault(name, None)
    return tuple(seen)

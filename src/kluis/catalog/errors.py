"""KluisError: the one error type that engine, vault, agent and CLI raise and report."""

from __future__ import annotations

import string
from typing import Any

from kluis.catalog.entry import CatalogEntry


class _SafeDict(dict[str, Any]):
    """Leaves unknown placeholders visible instead of raising KeyError."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, params: dict[str, Any]) -> str:
    """Fill ``{name}`` placeholders; a missing parameter stays as ``{name}``."""
    return string.Formatter().vformat(template, (), _SafeDict(params))


class KluisError(Exception):
    """A failure with a catalog entry: stable code, message, causes, actions.

    Raise it with the catalog code and the template's parameters::

        raise KluisError("SalLowDiskSpace", path=scratch, free="1.2 GiB", needed="5 GiB")
    """

    def __init__(self, code: str, /, *, detail: str | None = None, **params: Any) -> None:
        from kluis.catalog.registry import lookup

        self.entry: CatalogEntry = lookup(code)
        self.params: dict[str, Any] = params
        self.detail = detail
        super().__init__(self.message)

    @property
    def code(self) -> str:
        """The stable catalog code."""
        return self.entry.code

    @property
    def message(self) -> str:
        """The message in the active language with parameters filled in."""
        from kluis.catalog.i18n import translate

        text = render(translate(self.entry.message), self.params)
        if self.detail:
            text = f"{text} ({self.detail})"
        return text

    @property
    def title(self) -> str:
        """The entry's title in the active language."""
        from kluis.catalog.i18n import translate

        return translate(self.entry.title)

    @property
    def causes(self) -> list[str]:
        """Likely causes in order, in the active language."""
        from kluis.catalog.i18n import translate

        return [render(translate(c), self.params) for c in self.entry.causes]

    @property
    def actions(self) -> list[str]:
        """Recommended actions in order, in the active language."""
        from kluis.catalog.i18n import translate

        return [render(translate(a), self.params) for a in self.entry.actions]

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape used by the API, job records and ``--json`` output."""
        return {
            "code": self.code,
            "title": self.title,
            "severity": str(self.entry.severity),
            "message": self.message,
            "causes": self.causes,
            "actions": self.actions,
            "docs": f"docs/troubleshooting.md#{self.entry.anchor}",
            "params": {k: _json_safe(v) for k, v in self.params.items()},
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KluisError:
        """Rebuild an error from its ``to_dict()`` form, e.g. a stored job record.

        The rendered texts are not trusted: the error is rendered again from its code
        and parameters, so it shows in the reader's language.
        """
        return cls(str(data["code"]), detail=data.get("detail"), **dict(data.get("params") or {}))

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the error picklable across process pools.
        return (_rebuild, (self.code, self.detail, self.params))


def _json_safe(value: Any) -> Any:
    """Parameters as JSON can carry them: primitives as they are, anything else as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _rebuild(code: str, detail: str | None, params: dict[str, Any]) -> KluisError:
    return KluisError(code, detail=detail, **params)

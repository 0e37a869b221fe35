"""Fixed words of the human output around catalog entries, translated like the entries.

The CLI's error block ("Likely causes:", "What to do:") and ``kluis doctor``'s table
(headings, verdict words, check titles) are short fixed texts. They go into the same
``.po`` files as the catalog, so ``KLUIS_LANG=nl`` gives a Dutch report, not a Dutch
finding inside an English frame. Findings that pass are computed sentences (sizes, paths,
counts) and stay English.
"""

from __future__ import annotations

from collections.abc import Iterator

from kluis.catalog.i18n import translate

# Labels of the CLI's error block and of the doctor report.
LABELS: tuple[str, ...] = (
    "Error",
    "Likely causes:",
    "What to do:",
    "More:",
    "Fix:",
    "Check",
    "Verdict",
    "Code",
    "Finding",
    "kluis doctor: this machine",
    "kluis doctor: vault server",
    "Fixes applied (then checked again):",
    "done",
    "failed",
    "`kluis doctor --fix` can do this: {what}.",
    "not checked: needs {checks} to pass first",
    "All checks passed",
    "No check failed",
    "Some checks failed",
    "pass",
    "warn",
    "fail",
    "skip",
)


def doctor_titles() -> list[str]:
    """The title of every doctor check, machine and vault."""
    # Imported here: the doctor imports the catalog, not the other way round.
    from kluis.doctor import MACHINE_CHECKS, VAULT_CHECKS

    return [c.title for c in MACHINE_CHECKS] + [c.title for c in VAULT_CHECKS]


def ui_texts() -> Iterator[tuple[str, str]]:
    """(text, where it is used) for the translation template."""
    for text in LABELS:
        yield text, "CLI label"
    for title in doctor_titles():
        yield title, "doctor check title"


def t(text: str, **params: str) -> str:
    """``text`` in the active language, with ``{name}`` placeholders filled."""
    translated = translate(text)
    return translated.format(**params) if params else translated

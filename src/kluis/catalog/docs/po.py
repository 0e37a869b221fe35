"""Extracting the catalog's English strings into ``kluis.pot`` and merging them into the ``.po`` files."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

from kluis.catalog.entry import placeholders
from kluis.catalog.i18n import DOMAIN, LANGUAGES, LOCALE_DIR, SOURCE_LANGUAGE, po_path
from kluis.catalog.registry import entries_by_module
from kluis.catalog.ui import ui_texts

# Fixed header dates keep the generated files byte-identical between runs.
_FIXED_DATE = datetime(2025, 1, 1, tzinfo=UTC)
POT_PATH = LOCALE_DIR / f"{DOMAIN}.pot"
TRANSLATED_LANGUAGES = tuple(lang for lang in LANGUAGES if lang != SOURCE_LANGUAGE)
_LANGUAGE_NAMES = {"nl": "Dutch", "sv": "Swedish"}
_HEADER = (
    "# {what} of the Kluis error catalog.\n"
    "# Kept up to date by `python -m kluis.catalog.docs`; translate every empty msgstr and\n"
    "# keep each {{placeholder}} exactly as it is. See docs/catalog.md.\n"
    "#"
)


@dataclass(frozen=True)
class Untranslated:
    """One catalog string without a usable translation in one language."""

    lang: str
    code: str
    field: str
    text: str
    problem: str  # "missing", "fuzzy" or "placeholders differ: ..."

    def __str__(self) -> str:
        return f"[{self.lang}] {self.code} {self.field} ({self.problem}): {self.text!r}"


def build_template() -> Catalog:
    """The template catalog: every title, message, cause and action, with ``CODE field`` comments."""
    template = Catalog(
        locale=None,
        domain=DOMAIN,
        project="kluis",
        version="",
        msgid_bugs_address="",
        creation_date=_FIXED_DATE,
        revision_date=_FIXED_DATE,
        fuzzy=False,
        header_comment=_HEADER.format(what="Template for translations"),
    )
    for module, entries in entries_by_module().items():
        for entry in entries:
            for field, text in entry.texts:
                existing = template.get(text)
                comment = f"{entry.code} {field}"
                if existing is not None:
                    existing.auto_comments.append(comment)
                    continue
                flags = ["python-brace-format"] if placeholders(text) else []
                template.add(
                    text,
                    locations=[(f"src/kluis/catalog/entries/{module}.py", 0)],
                    auto_comments=[comment],
                    flags=flags,
                )
    for text, where in ui_texts():
        existing = template.get(text)
        if existing is not None:
            existing.auto_comments.append(where)
            continue
        flags = ["python-brace-format"] if placeholders(text) else []
        template.add(text, locations=[("src/kluis/catalog/ui.py", 0)], auto_comments=[where], flags=flags)
    return template


def _render(catalog: Catalog) -> bytes:
    buf = io.BytesIO()
    write_po(buf, catalog, width=100, ignore_obsolete=False, include_previous=False, sort_output=False)
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


def load_po(lang: str) -> Catalog:
    """The ``.po`` catalog of ``lang`` as stored, or an empty one."""
    path = po_path(lang)
    if not path.exists():
        return Catalog(locale=lang, domain=DOMAIN, project="kluis", fuzzy=False)
    with path.open("rb") as fh:
        return read_po(fh, locale=lang, domain=DOMAIN)


def merged_po(lang: str, template: Catalog) -> Catalog:
    """``lang``'s catalog brought up to date with ``template``.

    New strings are added empty; changed strings keep their old translation marked
    fuzzy (so a translator reviews it); translated strings no longer in the catalog are
    kept at the end as obsolete (``#~``) so they come back if the string returns.
    """
    catalog = load_po(lang)
    # Obsolete translations (``#~``) take part in matching again, so a string that was
    # removed for a while, or reworded, gets its translation back (as fuzzy if reworded).
    for message in list(catalog.obsolete.values()):
        if message.id and message.id not in catalog:
            catalog[message.id] = message
    catalog.obsolete.clear()
    catalog.update(template, no_fuzzy_matching=False, update_header_comment=False)
    # Only translated leftovers are worth keeping as obsolete; empty ones are noise.
    for key in [k for k, m in catalog.obsolete.items() if not m.string]:
        del catalog.obsolete[key]
    catalog.creation_date = _FIXED_DATE
    catalog.revision_date = _FIXED_DATE
    catalog.fuzzy = False
    catalog.project = "kluis"
    catalog.version = ""
    name = _LANGUAGE_NAMES.get(lang, lang)
    catalog.header_comment = _HEADER.format(what=f"{name} translations")
    catalog.language_team = name
    catalog.msgid_bugs_address = ""
    catalog.last_translator = "Kluis maintainers"
    return catalog


def update_catalogs() -> list[Path]:
    """Write ``kluis.pot`` and merge it into every language's ``.po``; the files that changed."""
    template = build_template()
    changed: list[Path] = []
    if _write_if_changed(POT_PATH, _render(template)):
        changed.append(POT_PATH)
    for lang in TRANSLATED_LANGUAGES:
        if _write_if_changed(po_path(lang), _render(merged_po(lang, template))):
            changed.append(po_path(lang))
    return changed


def untranslated(lang: str) -> list[Untranslated]:
    """Every catalog and UI string that has no usable translation in ``lang`` (as the ``.po`` stands)."""
    catalog = load_po(lang)
    entries = [e for es in entries_by_module().values() for e in es]
    texts = [(e.code, field, text) for e in entries for field, text in e.texts]
    texts += [("ui", where, text) for text, where in ui_texts()]
    out: list[Untranslated] = []
    for code, field, text in texts:
        message = catalog.get(text) or catalog.obsolete.get(text)
        if message is None or not message.string:
            out.append(Untranslated(lang, code, field, text, "missing"))
        elif message.fuzzy:
            out.append(Untranslated(lang, code, field, text, "fuzzy"))
        else:
            assert isinstance(message.string, str)
            want, got = set(placeholders(text)), set(placeholders(message.string))
            if want != got:
                problem = f"placeholders differ: want {sorted(want)}, got {sorted(got)}"
                out.append(Untranslated(lang, code, field, text, problem))
    return out

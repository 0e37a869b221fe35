"""Every catalog entry is translated into Dutch and Swedish, with the same placeholders."""

from __future__ import annotations

import pytest

from kluis.catalog import all_entries
from kluis.catalog.docs.po import TRANSLATED_LANGUAGES, untranslated
from kluis.catalog.entry import placeholders
from kluis.catalog.i18n import po_path, translate, translation_of


@pytest.mark.parametrize("lang", TRANSLATED_LANGUAGES)
def test_every_string_is_translated(lang: str) -> None:
    missing = untranslated(lang)
    if missing:
        lines = "\n".join(f"  {m}" for m in missing)
        pytest.fail(
            f"{len(missing)} catalog strings have no usable {lang} translation.\n"
            f"Run `python -m kluis.catalog.docs` (it adds them to {po_path(lang)}), fill in each"
            f" empty msgstr, remove `#, fuzzy` after review, and keep every {{placeholder}}:\n{lines}"
        )


@pytest.mark.parametrize("lang", TRANSLATED_LANGUAGES)
def test_translations_keep_placeholders_and_differ_from_english(lang: str) -> None:
    wrong = []
    for entry in all_entries().values():
        for field, text in entry.texts:
            translated = translation_of(text, lang)
            if translated is None:
                continue  # reported by test_every_string_is_translated
            if set(placeholders(translated)) != set(placeholders(text)):
                wrong.append(f"{entry.code} {field}: {translated!r}")
            # A sentence left in English is not a translation (short command-only texts may be equal).
            if translated == text and len(text.split()) > 3:
                wrong.append(f"{entry.code} {field} is still English: {text!r}")
    assert not wrong, "\n".join(wrong)


def test_english_is_the_source() -> None:
    entry = all_entries()["SalLowDiskSpace"]
    assert translate(entry.title, "en") == entry.title
    assert translation_of(entry.title, "en") == entry.title


def test_known_translations_use_the_domain_words() -> None:
    entry = all_entries()["UserErrorRpCollectionLimitReached"]
    assert "herstelpunt" in translate(entry.title, "nl")
    assert "återställningspunkter" in translate(entry.title, "sv")
    snap = all_entries()["UserErrorFsFreezeFailed"]
    assert "momentopname" in translate(snap.title, "nl")
    assert "ögonblicksbild" in translate(snap.title, "sv")

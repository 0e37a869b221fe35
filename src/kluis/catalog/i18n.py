"""Translation of catalog text. English is the source language.

The full gettext catalogs (Dutch, Swedish) live beside this module; until a
language's catalog is present, text falls back to English.
"""

from __future__ import annotations

import gettext
import os
from functools import lru_cache
from pathlib import Path

LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("en", "nl", "sv")


def active_language() -> str:
    """KLUIS_LANG wins, then the usual locale variables; English otherwise."""
    for var in ("KLUIS_LANG", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var, "")
        if value:
            lang = value.split(".")[0].split("_")[0].lower()
            if lang in LANGUAGES:
                return lang
            if var == "KLUIS_LANG":
                break
    return "en"


@lru_cache(maxsize=8)
def _translations(lang: str) -> gettext.NullTranslations:
    if lang == "en":
        return gettext.NullTranslations()
    return gettext.translation("kluis", localedir=LOCALE_DIR, languages=[lang], fallback=True)


def translate(text: str, lang: str | None = None) -> str:
    """The text in ``lang`` (default: the active language)."""
    return _translations(lang or active_language()).gettext(text)

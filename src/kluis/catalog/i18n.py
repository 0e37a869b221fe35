"""Translation of catalog text. English is the source language.

The Dutch and Swedish catalogs are gettext ``.po`` files beside this module
(``locale/<lang>/LC_MESSAGES/kluis.po``). They are read directly with Babel's
``.po`` reader, so a fresh checkout works without a compile step. A string without
a translation (missing, empty or marked fuzzy) falls back to English.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "kluis"
LANGUAGES = ("en", "nl", "sv")
SOURCE_LANGUAGE = "en"


def po_path(lang: str) -> Path:
    """Where the ``.po`` file of ``lang`` lives."""
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


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
    return SOURCE_LANGUAGE


@lru_cache(maxsize=8)
def messages(lang: str) -> dict[str, str]:
    """The usable translations of ``lang``: English text -> translated text."""
    path = po_path(lang)
    if lang == SOURCE_LANGUAGE or not path.exists():
        return {}
    # Imported here: Babel's reader is only needed once a translated language is used.
    from babel.messages.pofile import read_po

    with path.open("rb") as fh:
        catalog = read_po(fh, locale=lang, domain=DOMAIN)
    # Obsolete (``#~``) translations count too: they belong to strings whose entry
    # module is absent for now (not yet committed, or moved) and are still right.
    return {
        message.id: message.string
        for message in [*catalog.obsolete.values(), *catalog]
        if isinstance(message.id, str)
        and message.id
        and isinstance(message.string, str)
        and message.string
        and not message.fuzzy
    }


def translation_of(text: str, lang: str) -> str | None:
    """The translation of ``text`` into ``lang``, or None where there is none yet."""
    if lang == SOURCE_LANGUAGE:
        return text
    return messages(lang).get(text)


def translate(text: str, lang: str | None = None) -> str:
    """The text in ``lang`` (default: the active language), English where untranslated."""
    return messages(lang or active_language()).get(text, text)


def reload() -> None:
    """Forget the loaded catalogs, so edited ``.po`` files are read again."""
    messages.cache_clear()

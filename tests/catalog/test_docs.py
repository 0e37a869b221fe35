"""The generated documents and gettext files are up to date, and the generator works end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po, write_po

from kluis.catalog import all_entries, i18n
from kluis.catalog.docs import generate_docs, repo_root
from kluis.catalog.docs.guide import render_guide
from kluis.catalog.docs.po import POT_PATH, build_template, merged_po

ROOT = repo_root()
STALE_HINT = "regenerate with `python -m kluis.catalog.docs` and commit docs/ and the locale files"


def test_generated_docs_are_not_stale(tmp_path: Path) -> None:
    generate_docs(tmp_path, ROOT / "tests")
    stale = []
    for fresh in sorted(tmp_path.iterdir()):
        committed = ROOT / "docs" / fresh.name
        if not committed.exists() or committed.read_text(encoding="utf-8") != fresh.read_text(
            encoding="utf-8"
        ):
            stale.append(fresh.name)
    assert not stale, f"stale in docs/: {stale}; {STALE_HINT}"


def test_pot_is_not_stale() -> None:
    with POT_PATH.open("rb") as fh:
        committed = {m.id for m in read_po(fh) if m.id}
    wanted = {m.id for m in build_template() if m.id}
    assert committed == wanted, f"kluis.pot differs from the catalog; {STALE_HINT}"


def test_guides_show_every_entry_in_every_language() -> None:
    guides = {lang: render_guide(lang) for lang in ("en", "nl", "sv")}
    for entry in all_entries().values():
        for lang, text in guides.items():
            assert f'<a id="{entry.anchor}"></a>' in text, (lang, entry.code)
            assert f"`{entry.code}`" in text, (lang, entry.code)
    entry = all_entries()["SalLowDiskSpace"]
    assert entry.message in guides["en"]
    assert i18n.translate(entry.message, "nl") in guides["nl"]
    assert "{path}" in guides["nl"] and "Waarschijnlijke oorzaken" in guides["nl"]
    assert "Troliga orsaker" in guides["sv"]


def test_merge_keeps_changed_strings_as_fuzzy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A translation of an older wording is kept for review, marked fuzzy, and is not used.
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    template = build_template()
    entry = all_entries()["JobNotInProgress"]
    old = merged_po("nl", template)
    old.delete(entry.title)
    old.add("The job is not running now", string="De taak loopt nu niet")
    path = i18n.po_path("nl")
    path.parent.mkdir(parents=True)
    with path.open("wb") as fh:
        write_po(fh, old)
    merged = merged_po("nl", template)
    message = merged.get(entry.title)
    assert message is not None and message.fuzzy and message.string == "De taak loopt nu niet"
    assert merged.get("The job is not running now") is None  # matched, so no longer a message


@pytest.mark.timeout(60)
def test_cli_check_mode(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "kluis.catalog.docs", "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    stale = subprocess.run(
        [sys.executable, "-m", "kluis.catalog.docs", "--check", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert stale.returncode == 1 and "stale:" in stale.stdout


def test_obsolete_translations_still_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A translation kept as `#~` (its entry module not present right now) is still used.
    path = tmp_path / "nl" / "LC_MESSAGES" / "kluis.po"
    path.parent.mkdir(parents=True)
    path.write_text(
        '#, fuzzy\nmsgid ""\nmsgstr "Language: nl\\n"\n\n'
        '#~ msgid "Gone for now {x}"\n#~ msgstr "Even weg {x}"\n\n'
        '#, fuzzy\nmsgid "Reworded"\nmsgstr "Herschreven"\n',
        encoding="utf-8",
    )
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    i18n.reload()
    try:
        assert i18n.translate("Gone for now {x}", "nl") == "Even weg {x}"
        assert i18n.translation_of("Reworded", "nl") is None  # fuzzy is not used
    finally:
        monkeypatch.undo()
        i18n.reload()

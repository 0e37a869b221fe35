"""The troubleshooting guide, one Markdown file per language, rendered from the catalog."""

from __future__ import annotations

from kluis.catalog.entry import CatalogEntry
from kluis.catalog.i18n import translate
from kluis.catalog.registry import all_entries

GUIDE_FILES = {"en": "troubleshooting.md", "nl": "troubleshooting.nl.md", "sv": "troubleshooting.sv.md"}

_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Kluis troubleshooting guide",
        "generated": "Generated from the error catalog by `python -m kluis.catalog.docs`; do not edit"
        " by hand.",
        "intro": "Every failure Kluis reports carries a code. Find the code below: each entry gives"
        " the message (with its parameters in braces), the likely causes in the order to check them,"
        " and what to do, in order. `kluis doctor` runs the checks on a machine for you.",
        "other": "Other languages",
        "contents": "Contents",
        "severity": "Severity",
        "http": "HTTP status",
        "exit": "Exit code",
        "message": "Message",
        "params": "Parameters",
        "causes": "Likely causes",
        "actions": "What to do",
        "seeds": "Source documents",
        "seed_codes": "Also known as",
        "none": "none",
    },
    "nl": {
        "title": "Kluis: gids voor probleemoplossing",
        "generated": "Gegenereerd uit de foutencatalogus door `python -m kluis.catalog.docs`; niet"
        " met de hand bewerken.",
        "intro": "Elke fout die Kluis meldt heeft een code. Zoek de code hieronder op: bij elke"
        " vermelding staan de melding (met de parameters tussen accolades), de waarschijnlijke"
        " oorzaken in de volgorde waarin u ze controleert, en wat u moet doen, op volgorde."
        " `kluis doctor` voert de controles op een machine voor u uit.",
        "other": "Andere talen",
        "contents": "Inhoud",
        "severity": "Ernst",
        "http": "HTTP-status",
        "exit": "Afsluitcode",
        "message": "Melding",
        "params": "Parameters",
        "causes": "Waarschijnlijke oorzaken",
        "actions": "Wat te doen",
        "seeds": "Brondocumenten",
        "seed_codes": "Ook bekend als",
        "none": "geen",
    },
    "sv": {
        "title": "Kluis: felsökningsguide",
        "generated": "Genererad från felkatalogen med `python -m kluis.catalog.docs`; redigera inte"
        " för hand.",
        "intro": "Varje fel som Kluis rapporterar har en kod. Leta upp koden nedan: varje post visar"
        " meddelandet (med parametrarna inom klammerparenteser), de troliga orsakerna i den ordning"
        " du bör kontrollera dem och vad du ska göra, i ordning. `kluis doctor` kör kontrollerna på"
        " en maskin åt dig.",
        "other": "Andra språk",
        "contents": "Innehåll",
        "severity": "Allvarlighetsgrad",
        "http": "HTTP-status",
        "exit": "Slutkod",
        "message": "Meddelande",
        "params": "Parametrar",
        "causes": "Troliga orsaker",
        "actions": "Åtgärder",
        "seeds": "Källdokument",
        "seed_codes": "Även känd som",
        "none": "inga",
    },
}

_SEVERITY = {
    "en": {"error": "error", "warning": "warning", "info": "information"},
    "nl": {"error": "fout", "warning": "waarschuwing", "info": "informatie"},
    "sv": {"error": "fel", "warning": "varning", "info": "information"},
}

# Section titles by entry area; an area without a title here is shown by its name.
_AREAS: dict[str, dict[str, str]] = {
    "registration": {
        "en": "Registration and vault credentials",
        "nl": "Registratie en kluisreferenties",
        "sv": "Registrering och valvautentiseringsuppgifter",
    },
    "connectivity": {
        "en": "Connecting to the vault",
        "nl": "Verbinding met de kluis",
        "sv": "Anslutning till valvet",
    },
    "service": {"en": "Vault API", "nl": "Kluis-API", "sv": "Valvets API"},
    "vault": {"en": "Vault server", "nl": "Kluisserver", "sv": "Valvservern"},
    "guest_agent": {"en": "Agent in the machine", "nl": "Agent in de machine", "sv": "Agenten i maskinen"},
    "agent": {"en": "Agent", "nl": "Agent", "sv": "Agent"},
    "extension": {"en": "Snapshot extension", "nl": "Momentopname-extensie", "sv": "Ögonblicksbildstillägg"},
    "snapshot": {
        "en": "Snapshots and instant recovery points",
        "nl": "Momentopnamen en directe herstelpunten",
        "sv": "Ögonblicksbilder och snabba återställningspunkter",
    },
    "vm_backup": {
        "en": "Machine and VM disk backup",
        "nl": "Back-up van machine- en VM-schijven",
        "sv": "Säkerhetskopiering av maskin- och VM-diskar",
    },
    "scratch": {"en": "Scratch folder", "nl": "Scratchmap", "sv": "Scratchmapp"},
    "files": {"en": "Files and folders", "nl": "Bestanden en mappen", "sv": "Filer och mappar"},
    "backup": {"en": "Backup", "nl": "Back-up", "sv": "Säkerhetskopiering"},
    "jobs": {"en": "Jobs", "nl": "Taken", "sv": "Jobb"},
    "schedule": {"en": "Schedules", "nl": "Planningen", "sv": "Scheman"},
    "restore": {"en": "Restore", "nl": "Herstellen", "sv": "Återställning"},
    "repository": {"en": "Repository", "nl": "Opslagplaats", "sv": "Lagringsplats"},
    "store": {"en": "Storage", "nl": "Opslag", "sv": "Lagring"},
}
_AREA_ORDER = tuple(_AREAS)


def area_title(area: str, lang: str) -> str:
    """The section title of an entry area in ``lang``."""
    return _AREAS.get(area, {}).get(lang) or area.replace("_", " ").capitalize()


def _area_key(area: str) -> tuple[int, str]:
    return (_AREA_ORDER.index(area) if area in _AREA_ORDER else len(_AREA_ORDER), area)


def _by_area() -> list[tuple[str, list[CatalogEntry]]]:
    groups: dict[str, list[CatalogEntry]] = {}
    for entry in all_entries().values():
        groups.setdefault(entry.area, []).append(entry)
    return [(area, groups[area]) for area in sorted(groups, key=_area_key)]


def _md(text: str) -> str:
    # Placeholders stay visible as {name}; only characters that break a Markdown line are escaped.
    return text.replace("\n", " ").replace("|", "\\|")


def render_entry(entry: CatalogEntry, lang: str) -> list[str]:
    """The Markdown lines of one entry in ``lang``."""
    lab = _LABELS[lang]
    lines = [f'<a id="{entry.anchor}"></a>', f"### `{entry.code}`: {_md(translate(entry.title, lang))}", ""]
    facts = [
        f"**{lab['severity']}:** {_SEVERITY[lang][str(entry.severity)]}",
        f"**{lab['http']}:** {entry.http_status}",
        f"**{lab['exit']}:** {entry.exit_code}",
    ]
    if entry.seeds:
        facts.append(f"**{lab['seeds']}:** {', '.join(entry.seeds)}")
    if entry.seed_codes:
        facts.append(f"**{lab['seed_codes']}:** {', '.join(f'`{c}`' for c in entry.seed_codes)}")
    lines += [" · ".join(facts), ""]
    lines += [f"**{lab['message']}:** {_md(translate(entry.message, lang))}", ""]
    params = ", ".join(f"`{p}`" for p in entry.params) or lab["none"]
    lines += [f"**{lab['params']}:** {params}", ""]
    lines += [f"**{lab['causes']}:**", ""]
    lines += [f"{i}. {_md(translate(c, lang))}" for i, c in enumerate(entry.causes, 1)]
    lines += ["", f"**{lab['actions']}:**", ""]
    lines += [f"{i}. {_md(translate(a, lang))}" for i, a in enumerate(entry.actions, 1)]
    lines.append("")
    return lines


def render_guide(lang: str) -> str:
    """The whole troubleshooting guide in ``lang``."""
    lab = _LABELS[lang]
    others = ", ".join(f"[{code}]({name})" for code, name in GUIDE_FILES.items() if code != lang)
    lines = [f"# {lab['title']}", "", lab["generated"], "", lab["intro"], "", f"{lab['other']}: {others}", ""]
    groups = _by_area()
    lines += [f"## {lab['contents']}", ""]
    for area, entries in groups:
        codes = ", ".join(f"[`{e.code}`](#{e.anchor})" for e in entries)
        lines.append(f"- **{area_title(area, lang)}:** {codes}")
    lines.append("")
    for area, entries in groups:
        lines += [f"## {area_title(area, lang)}", ""]
        for entry in entries:
            lines += render_entry(entry, lang)
    return "\n".join(lines).rstrip("\n") + "\n"

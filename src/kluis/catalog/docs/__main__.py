"""``python -m kluis.catalog.docs``: refresh translations files and regenerate the catalog's documents.

Steps: (1) extract the catalog's English strings into ``kluis.pot`` and merge them into
each language's ``.po`` (new strings empty, changed ones fuzzy); (2) list every string
that still needs a translation; (3) write the guides, the mapping table and the
coverage report into ``docs/``. ``--check`` changes nothing and exits 1 when anything
is stale; ``--strict`` also exits 1 when a translation is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kluis.catalog.docs.generate import generate_docs, render_docs, repo_root
from kluis.catalog.docs.po import TRANSLATED_LANGUAGES, untranslated, update_catalogs
from kluis.catalog.i18n import po_path, reload


def main(argv: list[str] | None = None) -> int:
    """Run the generator; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m kluis.catalog.docs", description=__doc__)
    parser.add_argument("--root", type=Path, default=None, help="source checkout (default: found)")
    parser.add_argument("--out", type=Path, default=None, help="docs directory (default: ROOT/docs)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a translation is missing")
    args = parser.parse_args(argv)
    root = args.root or repo_root()
    out = args.out or root / "docs"
    status = 0

    if args.check:
        stale = [name for name, text in render_docs(root / "tests").items() if _differs(out / name, text)]
        for name in stale:
            print(f"stale: {out / name}")
        status = 1 if stale else 0
    else:
        for path in update_catalogs():
            print(f"updated {path}")
        reload()
        for path in generate_docs(out, root / "tests"):
            print(f"wrote {path}")

    missing = [item for lang in TRANSLATED_LANGUAGES for item in untranslated(lang)]
    if missing:
        print(f"\n{len(missing)} strings need a translation. Fill in their msgstr in", file=sys.stderr)
        for lang in TRANSLATED_LANGUAGES:
            print(f"  {po_path(lang)}", file=sys.stderr)
        print(
            "(search for the msgid; remove the `#, fuzzy` line once a fuzzy one is reviewed),"
            " then run this command again:",
            file=sys.stderr,
        )
        for item in missing:
            print(f"  {item}", file=sys.stderr)
        if args.strict:
            status = 1
    else:
        print("all catalog strings are translated into " + ", ".join(TRANSLATED_LANGUAGES))
    return status


def _differs(path: Path, text: str) -> bool:
    return not path.exists() or path.read_text(encoding="utf-8") != text


if __name__ == "__main__":
    sys.exit(main())

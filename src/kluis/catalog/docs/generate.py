"""Writing every generated document into a docs directory."""

from __future__ import annotations

from pathlib import Path

import kluis
from kluis.catalog.docs.coverage import render_coverage, render_mapping
from kluis.catalog.docs.guide import GUIDE_FILES, render_guide


def repo_root() -> Path:
    """The source checkout that holds ``docs/`` and ``tests/`` (Kluis is installed editable)."""
    here = Path(kluis.__file__).resolve().parent
    for candidate in (here.parent.parent, Path.cwd()):
        if (candidate / "pyproject.toml").exists():
            return candidate
    raise FileNotFoundError("no Kluis source checkout found; pass --root")


def render_docs(tests_dir: Path) -> dict[str, str]:
    """File name -> content of every generated document."""
    docs = {name: render_guide(lang) for lang, name in GUIDE_FILES.items()}
    docs["catalog-mapping.md"] = render_mapping()
    docs["troubleshooting-coverage.md"] = render_coverage(tests_dir)
    return docs


def generate_docs(out_dir: Path, tests_dir: Path) -> list[Path]:
    """Write the documents into ``out_dir``; returns the files whose content changed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in render_docs(tests_dir).items():
        path = out_dir / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed

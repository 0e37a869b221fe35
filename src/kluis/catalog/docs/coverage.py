"""The seed mapping table and the coverage report (seed condition -> code -> test -> doctor check)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from kluis.catalog.doctor_hook import doctor_checks
from kluis.catalog.registry import all_entries
from kluis.catalog.seedmap import SEED_CONDITIONS, SeedCondition

# Tests of the catalog itself name every code; they do not trigger any condition.
_EXCLUDED_TEST_DIRS = ("catalog",)
_MAX_TESTS_SHOWN = 3


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code_link(code: str) -> str:
    entry = all_entries()[code]
    return f"[`{code}`](troubleshooting.md#{entry.anchor})"


def render_mapping() -> str:
    """``docs/catalog-mapping.md``: every seed condition -> Kluis code -> Linux analogue."""
    lines = [
        "# Seed conditions and the catalog",
        "",
        "Generated from `src/kluis/catalog/seedmap/` by `python -m kluis.catalog.docs`; do not edit by hand.",
        "",
        "Every error condition in the five source documents, the catalog code that covers it, and"
        " what it becomes on Linux where the source describes something specific to Windows or"
        " Azure. Conditions Kluis cannot meet say why.",
        "",
        "| seed | condition in the source | source code | Kluis code | Linux analogue / not applicable |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cond in SEED_CONDITIONS:
        code = _code_link(cond.code) if cond.code else "—"
        if cond.not_applicable:
            note = f"not applicable: {cond.not_applicable}"
        else:
            note = cond.analogue or "same condition"
        source_code = f"`{cond.seed_code}`" if cond.seed_code else "—"
        lines.append(f"| {cond.seed} | {_cell(cond.condition)} | {source_code} | {code} | {_cell(note)} |")
    renamed = [e for e in all_entries().values() if e.seed_codes]
    lines += [
        "",
        "## Codes spelled differently from the source",
        "",
        "| Kluis code | source spelling or variants |",
        "| --- | --- |",
    ]
    for entry in renamed:
        lines.append(f"| {_code_link(entry.code)} | {', '.join(f'`{c}`' for c in entry.seed_codes)} |")
    return "\n".join(lines) + "\n"


def _tests_in(tree: ast.Module) -> Iterator[tuple[str, ast.AST]]:
    """``(qualified test name, node)`` for every test function, methods as ``Class::name``."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef) and sub.name.startswith("test"):
                    yield f"{node.name}::{sub.name}", sub


def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def find_triggering_tests(tests_dir: Path, codes: set[str]) -> dict[str, list[str]]:
    """Code -> the tests that name it as a string (``tests/x.py::test_y``), outside the catalog's tests.

    A code named only outside any test function (a module constant, a fixture) counts
    for the file as a whole.
    """
    found: dict[str, list[str]] = {}
    root = tests_dir.parent
    for path in sorted(tests_dir.rglob("*.py")):
        rel = path.relative_to(tests_dir)
        if rel.parts and rel.parts[0] in _EXCLUDED_TEST_DIRS:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        shown = path.relative_to(root).as_posix()
        in_tests: set[str] = set()
        for name, node in _tests_in(tree):
            for code in sorted(_strings(node) & codes):
                found.setdefault(code, []).append(f"{shown}::{name}")
                in_tests.add(code)
        for code in sorted((_strings(tree) & codes) - in_tests):
            found.setdefault(code, []).append(shown)
    return found


def _tests_cell(tests: list[str]) -> str:
    if not tests:
        return "none yet"
    shown = ", ".join(f"`{t}`" for t in tests[:_MAX_TESTS_SHOWN])
    more = len(tests) - _MAX_TESTS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _doctor_cell(code: str, checks: dict[str, list[str]]) -> str:
    if checks.get(code):
        return ", ".join(f"`{c}`" for c in checks[code])
    planned = all_entries()[code].doctor_check
    return f"none yet (planned: `{planned}`)" if planned else "none yet"


def render_coverage(tests_dir: Path) -> str:
    """``docs/troubleshooting-coverage.md``: seed condition -> code -> test -> doctor check."""
    entries = all_entries()
    tests = find_triggering_tests(tests_dir, set(entries))
    checks = doctor_checks()
    lines = [
        "# Troubleshooting coverage",
        "",
        "Generated by `python -m kluis.catalog.docs`; do not edit by hand. A test counts when it names"
        " the code as a string (the tests of the catalog itself do not count); a doctor check counts"
        " when a doctor module declares it in `CATALOG_CHECKS` (see `docs/catalog.md`).",
        "",
        "## Seed conditions",
        "",
        "| seed | condition in the source | Kluis code | test that triggers it | doctor check |",
        "| --- | --- | --- | --- | --- |",
    ]
    covered = 0
    for cond in SEED_CONDITIONS:
        lines.append(_seed_row(cond, tests, checks))
        covered += bool(cond.code and tests.get(cond.code))
    applicable = sum(1 for c in SEED_CONDITIONS if c.code)
    lines += [
        "",
        f"{len(SEED_CONDITIONS)} seed conditions; {applicable} map to a code,"
        f" {len(SEED_CONDITIONS) - applicable} are not applicable; {covered} have a triggering test.",
        "",
        "## Every catalog code",
        "",
        "| Kluis code | test that triggers it | doctor check |",
        "| --- | --- | --- |",
    ]
    for code in entries:
        lines.append(
            f"| {_code_link(code)} | {_tests_cell(tests.get(code, []))} | {_doctor_cell(code, checks)} |"
        )
    return "\n".join(lines) + "\n"


def _seed_row(cond: SeedCondition, tests: dict[str, list[str]], checks: dict[str, list[str]]) -> str:
    if not cond.code:
        reason = _cell(cond.not_applicable)
        return f"| {cond.seed} | {_cell(cond.condition)} | — | not applicable: {reason} | — |"
    return (
        f"| {cond.seed} | {_cell(cond.condition)} | {_code_link(cond.code)}"
        f" | {_tests_cell(tests.get(cond.code, []))} | {_doctor_cell(cond.code, checks)} |"
    )

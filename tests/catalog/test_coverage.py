"""The coverage report's sources: tests that name a code, and doctor checks declared by a hook."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from kluis.catalog.docs.coverage import find_triggering_tests, render_coverage, render_mapping
from kluis.catalog.doctor_hook import doctor_checks
from kluis.catalog.seedmap import SEED_CONDITIONS


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_finds_tests_that_name_a_code(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    _write(
        tests / "agent" / "test_scratch.py",
        "CODE = 'SalBitmapError'\n"
        "def test_full_disk():\n    assert err.code == 'SalLowDiskSpace'\n"
        "class TestKek:\n    def test_deleted(self):\n        raise KluisError('34506')\n",
    )
    _write(tests / "catalog" / "test_all.py", "def test_x():\n    'UserErrorFsFreezeFailed'\n")
    _write(tests / "broken.py", "def (:\n")
    found = find_triggering_tests(
        tests, {"SalLowDiskSpace", "34506", "SalBitmapError", "UserErrorFsFreezeFailed"}
    )
    assert found["SalLowDiskSpace"] == ["tests/agent/test_scratch.py::test_full_disk"]
    assert found["34506"] == ["tests/agent/test_scratch.py::TestKek::test_deleted"]
    assert found["SalBitmapError"] == ["tests/agent/test_scratch.py"]
    assert "UserErrorFsFreezeFailed" not in found  # the catalog's own tests do not count


def test_doctor_hook_reads_declared_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    module = types.ModuleType("kluis_test_doctor")
    module.CATALOG_CHECKS = {"scratch-folder": ("SalLowDiskSpace", "ScratchFolderInvalid")}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kluis_test_doctor", module)
    checks = doctor_checks(["kluis_test_doctor", "kluis_no_such_doctor_module"])
    assert checks == {"SalLowDiskSpace": ["scratch-folder"], "ScratchFolderInvalid": ["scratch-folder"]}

    monkeypatch.setattr("kluis.catalog.docs.coverage.doctor_checks", lambda: checks)
    tests = tmp_path / "tests"
    _write(tests / "test_a.py", "def test_low():\n    'SalLowDiskSpace'\n")
    report = render_coverage(tests)
    row = next(line for line in report.splitlines() if line.startswith("| [`SalLowDiskSpace`]"))
    assert "`tests/test_a.py::test_low`" in row and "`scratch-folder`" in row
    planned = next(line for line in report.splitlines() if line.startswith("| [`ClockSkew`]"))
    assert "none yet (planned: `clock-skew`)" in planned


def test_reports_cover_every_seed_condition(tmp_path: Path) -> None:
    mapping = render_mapping()
    coverage = render_coverage(tmp_path)
    for cond in SEED_CONDITIONS:
        needle = cond.condition.replace("|", "\\|")
        assert needle in mapping and needle in coverage, cond.condition
    assert mapping.count("not applicable:") == sum(1 for c in SEED_CONDITIONS if c.not_applicable)
    assert "`ExtentionOperationFailedForManagedDisks`" in mapping

"""The frame around catalog text follows KLUIS_LANG too: the CLI's error block and doctor's report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _kluis(lang: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLUIS_")}
    env.update(KLUIS_LANG=lang, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "kluis", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("lang", "words"),
    [
        ("en", ["Error AgentNotRegistered", "Likely causes:", "What to do:", "More:"]),
        ("nl", ["Fout AgentNotRegistered", "Waarschijnlijke oorzaken:", "Wat te doen:", "Meer:"]),
        ("sv", ["Fel AgentNotRegistered", "Troliga orsaker:", "Vad du kan göra:", "Mer:"]),
    ],
)
def test_error_block_labels(lang: str, words: list[str], tmp_path: Path) -> None:
    result = _kluis(lang, "agent", "status", "--config-dir", str(tmp_path))
    assert result.returncode != 0
    for word in words:
        assert word in result.stderr + result.stdout, (word, result.stderr)


@pytest.mark.parametrize(
    ("lang", "words"),
    [
        ("en", ["kluis doctor: this machine", "Agent configuration", "Finding", "Some checks failed"]),
        ("nl", ["kluis doctor: deze machine", "Agentconfiguratie", "Bevinding", "Enkele controles mislukt"]),
        ("sv", ["kluis doctor: den här maskinen", "Agentkonfiguration", "Resultat", "Några kontroller"]),
    ],
)
def test_doctor_report_labels(lang: str, words: list[str], tmp_path: Path) -> None:
    result = _kluis(lang, "doctor", "--config-dir", str(tmp_path))
    assert result.returncode != 0
    for word in words:
        assert word in result.stdout, (word, result.stdout)

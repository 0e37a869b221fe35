"""KluisError: language selection, rendering, pickling and the JSON shape."""

from __future__ import annotations

import pickle

import pytest

from kluis.catalog import KluisError, lookup
from kluis.catalog.i18n import active_language, translate


def test_english_message_with_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLUIS_LANG", "en")
    err = KluisError("SalLowDiskSpace", path="/var/lib/kluis/scratch", free="1.2 GiB", needed="5 GiB")
    assert err.code == "SalLowDiskSpace"
    assert "/var/lib/kluis/scratch" in err.message and "1.2 GiB" in err.message and "5 GiB" in err.message
    assert str(err) == err.message


def test_kluis_lang_selects_dutch_and_swedish(monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"item": "web01-files", "job": "j-42"}
    monkeypatch.setenv("KLUIS_LANG", "nl")
    nl = KluisError("UserErrorBackupOperationInProgress", **params)
    assert nl.message == translate(lookup("UserErrorBackupOperationInProgress").message, "nl").format(
        **params
    )
    assert "taak j-42" in nl.message
    assert nl.causes[0] != lookup("UserErrorBackupOperationInProgress").causes[0]
    monkeypatch.setenv("KLUIS_LANG", "sv")
    sv = KluisError("UserErrorBackupOperationInProgress", **params)
    assert "jobbet j-42" in sv.message
    assert sv.actions[-1].startswith("Kör säkerhetskopieringen igen")


def test_language_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KLUIS_LANG", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(var, raising=False)
    assert active_language() == "en"
    monkeypatch.setenv("LANG", "nl_NL.UTF-8")
    assert active_language() == "nl"
    monkeypatch.setenv("KLUIS_LANG", "fr")
    assert active_language() == "en"  # an unsupported KLUIS_LANG does not fall through to LANG
    err = KluisError("ResourceNotFound", kind="item", name="x")
    assert err.message == "There is no item named x."


def test_missing_parameter_stays_visible_and_detail_is_appended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLUIS_LANG", "en")
    err = KluisError("ResourceNotFound", kind="policy", detail="looked up by id")
    assert err.message == "There is no policy named {name}. (looked up by id)"


def test_unknown_code_is_a_programming_error() -> None:
    with pytest.raises(LookupError):
        KluisError("NoSuchCode")


def test_pickles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLUIS_LANG", "en")
    err = KluisError("RoleForbidden", role="Reader", action="delete data", needed="Contributor", detail="x")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, KluisError)
    assert (back.code, back.params, back.detail, back.message) == (
        err.code,
        err.params,
        err.detail,
        err.message,
    )


def test_to_dict_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLUIS_LANG", "en")
    err = KluisError("ValidationFailed", reason="retain_until is in the past")
    data = err.to_dict()
    assert set(data) == {
        "code",
        "title",
        "severity",
        "message",
        "causes",
        "actions",
        "docs",
        "params",
        "detail",
    }
    assert data["code"] == "ValidationFailed"
    assert data["severity"] == "error"
    assert data["message"] == "The request was refused: retain_until is in the past."
    assert data["title"] == lookup("ValidationFailed").title
    assert isinstance(data["causes"], list) and all(isinstance(c, str) for c in data["causes"])
    assert isinstance(data["actions"], list) and data["actions"]
    assert data["docs"] == "docs/troubleshooting.md#validationfailed"


def test_round_trips_through_json_in_another_language(monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    from pathlib import Path

    monkeypatch.setenv("KLUIS_LANG", "en")
    err = KluisError("SalLowDiskSpace", path=Path("/srv/scratch"), free="1 GiB", needed=5, detail="df")
    stored = json.loads(json.dumps(err.to_dict()))
    assert stored["params"] == {"path": "/srv/scratch", "free": "1 GiB", "needed": 5}
    monkeypatch.setenv("KLUIS_LANG", "sv")
    back = KluisError.from_dict(stored)
    assert back.code == "SalLowDiskSpace" and back.detail == "df"
    assert back.message.startswith("Volymen med scratchmappen /srv/scratch har 1 GiB ledigt")

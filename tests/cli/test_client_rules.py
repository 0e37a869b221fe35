"""The CLI's own rules, without a server: where settings come from, names, dates, errors."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from pathlib import Path

import httpx
import pytest

from kluis.catalog import KluisError
from kluis.cli import client
from kluis.cli.backup import parse_retain_until
from kluis.cli.jobs import warning_summary
from kluis.cli.policy import build_retention, build_schedule, describe_schedule
from kluis.cli.restore import restore_request


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("KLUIS_VAULT_URL", "KLUIS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KLUIS_CLI_CONFIG", str(tmp_path / "cli.toml"))
    monkeypatch.setenv("KLUIS_AGENT_CONFIG_DIR", str(tmp_path / "no-agent"))
    return tmp_path / "cli.toml"


def test_settings_come_from_options_then_environment_then_login(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(KluisError) as caught:
        client.resolve()
    assert caught.value.code == "CliNotLoggedIn" and "vault URL" in caught.value.message
    client.save_config(
        client.Connection("https://saved:8400", "kluis_u_saved", tls_fingerprint="sha256:" + "a" * 64)
    )
    assert clean.stat().st_mode & 0o777 == 0o600
    saved = client.resolve()
    assert (saved.url, saved.token, saved.tls_fingerprint) == (
        "https://saved:8400",
        "kluis_u_saved",
        "sha256:" + "a" * 64,
    )
    monkeypatch.setenv("KLUIS_TOKEN", "kluis_u_env")
    assert client.resolve().token == "kluis_u_env"
    assert client.resolve(token="kluis_u_opt").token == "kluis_u_opt"
    # Another vault on the command line does not inherit the saved vault's pin.
    other = client.resolve(vault="https://other:8400/")
    assert other.url == "https://other:8400" and other.tls_fingerprint is None
    clean.write_text("[vault\nurl = ")
    with pytest.raises(KluisError) as broken:
        client.resolve()
    assert broken.value.code == "CliConfigInvalid" and str(clean) in broken.value.message


def test_names_ids_and_prefixes() -> None:
    rows = [
        {"id": "a1b2c3d4" + "0" * 24, "name": "web", "machine_id": "m1"},
        {"id": "a1b2ffff" + "0" * 24, "name": "web", "machine_id": "m2"},
        {"id": "b7" + "1" * 30, "name": "db", "machine_id": "m1"},
    ]
    pick = client._pick
    assert pick(rows, "db", "item", name_key="name", label=None)["id"].startswith("b7")
    assert pick(rows, "a1b2c3", "item", name_key="name", label=None)["machine_id"] == "m1"
    with pytest.raises(KluisError) as twice:
        pick(rows, "web", "item", name_key="name", label=client._item_label)
    assert twice.value.code == "ValidationFailed" and "matches 2" in twice.value.message
    with pytest.raises(KluisError) as short:
        pick(rows, "a1", "item", name_key="name", label=None)  # too short to be a prefix
    assert short.value.code == "ResourceNotFound"


def test_retain_until_dates() -> None:
    day = parse_retain_until("2031-03-04")
    assert (day.year, day.month, day.day, day.hour, day.minute) == (2031, 3, 4, 23, 59)
    assert day.tzinfo is not None
    exact = parse_retain_until("2031-03-04T10:00:00+02:00")
    assert exact.utcoffset() == dt.timedelta(hours=2)
    with pytest.raises(KluisError) as bad:
        parse_retain_until("next tuesday")
    assert bad.value.code == "ValidationFailed"


def test_policy_options_make_api_objects() -> None:
    weekly = build_schedule("weekly", ["22:00"], ["sun", "wed"], None, None, None, "Europe/Amsterdam")
    assert weekly == {
        "kind": "weekly",
        "timezone": "Europe/Amsterdam",
        "times": ["22:00"],
        "weekdays": ["sun", "wed"],
    }
    with pytest.raises(KluisError):
        build_schedule("weekly", [], [], None, None, None, "UTC")
    hourly = build_schedule("hourly", [], [], 6, "08:00", 12, "UTC")
    assert (
        hourly["interval_hours"] == 6 and describe_schedule(hourly) == "every 6 h from 08:00 for 12 h (UTC)"
    )
    assert build_retention(None, None, None, None, None, None) == {"daily": 30}
    rule = build_retention(7, 4, 12, 2, "sat", None)
    assert rule["monthly_day"] == "last" and rule["yearly_month"] == 12 and rule["weekly_weekday"] == "sat"


def test_restore_request_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    point = {"id": "p" * 32}
    body = restore_request(
        point, ["docs/a.txt", "/etc/hosts"], target="out", conflict="copy", machine_id=None, local=True
    )
    assert body["paths"] == [str(tmp_path / "docs/a.txt"), "/etc/hosts"]
    assert (
        body["target_path"] == str(tmp_path / "out") and body["conflict"] == "copy" and not body["overwrite"]
    )
    assert "target_machine_id" not in body
    with pytest.raises(KluisError):
        restore_request(point, ["rel"], target=None, conflict="overwrite", machine_id="m2", local=False)
    with pytest.raises(KluisError):
        restore_request(point, [], target=None, conflict="merge", machine_id=None, local=True)


def test_warning_summary_of_a_job() -> None:
    job = {
        "status": "CompletedWithWarnings",
        "warnings": [
            {
                "code": "BackupCompletedWithWarnings",
                "params": {"item": "x", "count": 2, "log": "/s/failed.log"},
            },
            {"code": "0x80070005", "message": "access denied: /a"},
            {"code": "0x80070570", "message": "unreadable: /b"},
        ],
        "result": {"stats": {"warnings": 2}},
    }
    summary = warning_summary(job)
    assert summary["skipped"] == 2 and summary["failed_files_log"] == "/s/failed.log"
    assert [e["code"] for e in summary["entries"]] == ["0x80070005", "0x80070570"]


def test_error_bodies_become_catalog_errors() -> None:
    known = client.error_from_body({"code": "ResourceNotFound", "params": {"kind": "policy", "name": "x"}})
    assert known is not None and known.code == "ResourceNotFound" and known.entry.exit_code == 4
    assert "policy" in known.message
    newer = client.error_from_body(
        {"code": "SomethingNew", "message": "A {braced} thing failed", "causes": ["c"], "actions": ["a"]}
    )
    assert isinstance(newer, client.RemoteError)
    assert (
        newer.code == "SomethingNew"
        and newer.message == "A {braced} thing failed"
        and newer.entry.exit_code == 1
    )
    assert newer.actions == ["a"]
    assert client.error_from_body("<html>") is None


def test_connection_failures_name_the_step() -> None:
    url = "https://vault.example:8400"

    def wrapped(
        exc_type: type[httpx.TransportError], cause: BaseException | None, text: str = "x"
    ) -> KluisError:
        exc = exc_type(text)
        exc.__cause__ = cause
        return client.transport_error(exc, url)

    assert (
        wrapped(httpx.ConnectError, socket.gaierror(-2, "Name or service not known")).code
        == "VaultDnsResolutionFailed"
    )
    tls = wrapped(httpx.ConnectError, ssl.SSLError(1, "certificate verify failed"))
    assert tls.code == "TlsHandshakeFailed" and tls.params["host"] == "vault.example"
    refused = wrapped(
        httpx.ConnectError, ConnectionRefusedError(111, "Connection refused"), "[Errno 111] refused"
    )
    assert refused.code == "CliVaultUnreachable" and refused.params["stage"] == "TCP connect"
    assert wrapped(httpx.ReadTimeout, None).params["stage"] == "HTTP"
    assert (
        wrapped(httpx.ProxyError, None, "407 Proxy Authentication Required").code
        == "ProxyAuthenticationRequired"
    )

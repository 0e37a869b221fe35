"""Agent and CLI catalog codes met the way a user meets them, against a real vault and real agents.

One vault for the module (``tests/conditions/conftest.py``) and one registered agent
whose daemon runs throughout (``host-a``); a second agent (``host-b``) is registered
but only started for the cross-machine restore. Every condition is made for real:
a missing or broken agent.toml, a second daemon on the same scratch folder, two
different passphrases typed on a terminal, a disks item naming no disk, a restore on
another machine given the wrong passphrase, a CLI on a machine the vault does not
know, a recovery point id the vault never made.
"""

from __future__ import annotations

import os
import pty
import re
import select
import sys
import termios
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from kluis.catalog.registry import all_entries
from kluis.vault.db.models import ProtectedItem
from tests.agent.helpers import (
    OTHER_PASSPHRASE,
    PASSPHRASE,
    AgentProc,
    Result,
    VaultServer,
    base_env,
    kluis,
    make_tree,
)
from tests.doctor.helpers import run_doctor

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BOGUS_POINT = "0" * 32  # a well-formed recovery point id the vault never handed out


def exit_code(code: str) -> int:
    """The exit code the catalog gives ``code``."""
    return all_entries()[code].exit_code


def assert_printed(result: Result, code: str) -> None:
    """A command without ``--json`` failed with ``code``: its exit code, and the code on stderr."""
    assert result.rc == exit_code(code), (result.rc, result.stdout, result.stderr)
    assert f"Error {code}:" in result.stderr, result.stderr


def assert_json_error(result: Result, code: str) -> dict[str, Any]:
    """A ``--json`` command failed with ``code``: its exit code and the error's code field."""
    assert result.rc == exit_code(code), (result.rc, result.stdout, result.stderr)
    error = result.error
    assert error["code"] == code, error
    return error


@dataclass
class Site:
    """The module's vault, its credentials file, a policy, and agent A (running)."""

    vault: VaultServer
    creds: Path
    policy: str
    a: AgentProc
    workdir: Path


@pytest.fixture(scope="module")
def site(vault: VaultServer, workdir: Path) -> Iterator[Site]:
    """Agent A registered and running (heartbeat every second, short long polls)."""
    creds = vault.credentials_file(workdir / "creds")
    a = AgentProc(root=workdir / "host-a", hostname="codes-host-a", scratch=workdir / "host-a" / "scratch")
    registered = a.register(creds)
    assert registered.rc == 0, registered.stdout + registered.stderr
    a.tune(heartbeat_interval=1, poll_wait=3)
    a.start()
    try:
        yield Site(vault, creds, vault.policy()["id"], a, workdir)
    finally:
        a.stop()


def _copy_config(agent: AgentProc, where: Path, **agent_section: Any) -> Path:
    """A copy of ``agent``'s agent.toml in a directory of its own, with ``[agent]`` keys changed."""
    where.mkdir(parents=True, exist_ok=True)
    doc = tomllib.loads(agent.config_file.read_text())
    doc.setdefault("agent", {}).update(agent_section)
    (where / "agent.toml").write_text(tomli_w.dumps(doc))
    return where


# -- the agent's configuration ---------------------------------------------------------------


def test_agent_run_before_registering(workdir: Path) -> None:
    fresh = workdir / "never-registered"
    fresh.mkdir()
    proc = AgentProc(root=workdir / "never", hostname="codes-never", scratch=workdir / "never" / "scratch")
    ran = kluis("agent", "run", "--config-dir", str(fresh), "--hostname", proc.hostname, timeout=60)
    assert_printed(ran, "AgentNotRegistered")
    assert str(fresh / "agent.toml") in ran.stderr
    status = kluis("agent", "status", "--json", "--config-dir", str(fresh))
    error = assert_json_error(status, "AgentNotRegistered")
    assert error["params"]["path"] == str(fresh / "agent.toml")


def test_agent_toml_with_a_bad_value(site: Site) -> None:
    # An administrator edits agent.toml by hand and sets max_jobs to 0.
    broken = _copy_config(site.a, site.workdir / "bad-max-jobs", max_jobs=0)
    ran = kluis("agent", "run", "--config-dir", str(broken), "--hostname", site.a.hostname)
    assert_printed(ran, "AgentConfigInvalid")
    assert "max_jobs must be at least 1" in ran.stderr
    # The same value through `kluis agent config set` is refused before it is written.
    before = site.a.config_file.read_text()
    refused = site.a.cli("config", "set", "poll_wait", "600")
    assert_printed(refused, "AgentConfigInvalid")
    assert "poll_wait must be between 0 and 60" in refused.stderr
    assert site.a.config_file.read_text() == before
    # A file that is not TOML at all.
    garbled = site.workdir / "garbled"
    garbled.mkdir()
    (garbled / "agent.toml").write_text("[vault\nurl = \n")
    status = kluis("agent", "status", "--json", "--config-dir", str(garbled))
    assert_json_error(status, "AgentConfigInvalid")


def test_pinned_certificate_missing_and_the_doctor_cannot_restart(site: Site) -> None:
    # agent.toml names the vault's certificate, but the file was deleted: the daemon refuses to
    # start, and so `kluis doctor --fix`, which starts it, reports that its fix could not run.
    proc = AgentProc(root=site.workdir / "lost-cert", hostname=site.a.hostname, scratch=site.workdir / "lc-s")
    where = _copy_config(site.a, proc.config_dir, scratch=str(proc.scratch))
    doc = tomllib.loads((where / "agent.toml").read_text())
    doc["vault"]["tls_certificate"] = "vault-ca.pem"
    (where / "agent.toml").write_text(tomli_w.dumps(doc))
    ran = kluis("agent", "run", "--config-dir", str(where), "--hostname", site.a.hostname)
    assert_printed(ran, "AgentConfigInvalid")
    assert "certificate cannot be read" in ran.stderr and str(where / "vault-ca.pem") in ran.stderr

    report = run_doctor(proc, "--fix")
    fixes = {f["check"]: f for f in report.data["fixes"]}
    fix = fixes["agent-service"]
    assert fix["ok"] is False, fix
    assert fix["error"]["code"] == "DoctorCheckFailed", fix
    assert fix["error"]["params"]["check"] == "agent-service (--fix)"
    assert "exited with" in fix["error"]["params"]["reason"]
    assert report.rc == 1  # the agent still does not run
    assert report.code("agent-service") == "AgentNotRunning"


# -- the passphrase typed on a terminal ------------------------------------------------------------


def _echoing(fd: int) -> bool:
    """Whether the terminal behind the pty master ``fd`` echoes what is typed."""
    return bool(termios.tcgetattr(fd)[3] & termios.ECHO)


def _on_terminal(argv: list[str], answers: list[tuple[str, str]], timeout: float = 60) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as its controlling terminal, answering prompts in order.

    ``answers`` pairs a prompt's text with the line typed when it appears; returns the exit
    status and everything the terminal showed.
    """
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once (the parent runs threads)
        try:
            os.execvpe(argv[0], argv, base_env())
        finally:
            os._exit(127)
    seen = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                seen += data
            # Type only once the prompt shows and the terminal stopped echoing: getpass drops
            # whatever was typed before it switched echo off.
            if pending and pending[0][0].encode() in seen and not _echoing(fd):
                prompt, line = pending.pop(0)
                seen = seen.replace(prompt.encode(), b"<" + prompt.encode() + b">", 1)
                os.write(fd, line.encode() + b"\n")
        else:
            os.kill(pid, 9)
            raise AssertionError(f"{argv} did not end within {timeout} s:\n{seen.decode(errors='replace')}")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    # The terminal shows colours; the text is what a person reads.
    return os.waitstatus_to_exitcode(status), ANSI.sub("", seen.decode(errors="replace"))


def test_passphrase_typed_twice_differently(site: Site) -> None:
    where = site.workdir / "typo"
    argv = [sys.executable, "-m", "kluis", "agent", "register", "--vault-credentials", str(site.creds)]
    argv += ["--config-dir", str(where / "etc"), "--scratch", str(where / "scratch")]
    argv += ["--hostname", "codes-typo"]
    rc, shown = _on_terminal(argv, [("Passphrase", PASSPHRASE), ("Type it again", OTHER_PASSPHRASE)])
    assert rc == exit_code("AgentPassphraseMismatch"), shown
    assert "Error AgentPassphraseMismatch:" in shown, shown
    # Nothing was registered: no configuration, and the vault knows no such machine.
    assert not (where / "etc" / "agent.toml").exists()
    hosts = [m["hostname"] for m in site.vault.ok("GET", "/api/v1/machines")]
    assert "codes-typo" not in hosts


# -- one daemon per scratch folder -------------------------------------------------------------


def test_second_daemon_on_the_same_machine(site: Site) -> None:
    assert site.a.process is not None and site.a.process.poll() is None
    second = site.a.cli("run")
    assert_printed(second, "AgentAlreadyRunning")
    assert str(site.a.process.pid) in second.stderr
    # Moving the scratch folder under the running daemon is refused the same way.
    moved = site.a.cli("config", "set", "scratch", str(site.workdir / "elsewhere"))
    assert_printed(moved, "AgentAlreadyRunning")
    assert site.a.process.poll() is None  # the first daemon runs on
    assert tomllib.loads(site.a.config_file.read_text())["agent"]["scratch"] == str(site.a.scratch)


# -- jobs the agent cannot run ---------------------------------------------------------------


def test_disks_item_naming_no_disk(site: Site) -> None:
    # The vault refuses a disks item the agent could not back up ...
    body = {"machine_id": site.a.machine_id(), "name": "all-disks", "kind": "disks", "policy": site.policy}
    for disks in (None, [], ["all"], ["/dev/loop0", "vm-1"], ["vm-1", "vm-2"]):
        refused = site.vault.request("POST", "/api/v1/items", json={**body, "disks": disks})
        assert refused.status_code == 422 and refused.json()["code"] == "ValidationFailed", disks
    # ... and an agent given one anyway (a newer vault's item, here written into the
    # database) says so when the job reaches it.
    item = site.vault.ok("POST", "/api/v1/items", json={**body, "disks": ["vm-1"]})
    with site.vault.db.write() as s:
        row = s.get(ProtectedItem, item["id"])
        assert row is not None
        row.spec = {"disks": ["all"]}
    done = site.vault.wait_job(site.vault.backup(item["id"])["id"], timeout=90)
    assert done["status"] == "Failed", done
    assert done["error"]["code"] == "AgentJobUnsupported", done
    assert "not a list of block devices or one VM name" in done["error"]["message"]


# -- restoring on another machine --------------------------------------------------------------


@pytest.fixture(scope="module")
def backed_up(site: Site) -> dict[str, Any]:
    """A files item of agent A with one recovery point: ``item``, ``point``, ``data``."""
    data = site.workdir / "a-data"
    make_tree(data, files=6, size=16 * 1024, seed=5)
    item = site.vault.files_item(site.a.machine_id(), site.policy, [str(data)], "a-docs")
    done = site.vault.wait_job(site.vault.backup(item["id"])["id"], timeout=90)
    assert done["status"] == "Completed", done
    return {"item": item, "point": done["result"]["point_id"], "data": data}


def test_restore_on_another_machine_with_the_wrong_passphrase(site: Site, backed_up: dict[str, Any]) -> None:
    b = AgentProc(
        root=site.workdir / "host-b", hostname="codes-host-b", scratch=site.workdir / "host-b" / "s"
    )
    registered = b.register(site.creds, OTHER_PASSPHRASE)
    assert registered.rc == 0, registered.stdout + registered.stderr
    b.tune(heartbeat_interval=1, poll_wait=3)
    # B is told A's passphrase, but the one given is B's own, not A's.
    wrong = b.root / "a-passphrase"
    wrong.write_text(OTHER_PASSPHRASE + "\n")
    given = b.cli("source-passphrase", site.a.machine_id(), "--passphrase-file", str(wrong), "--json")
    assert given.rc == 0, given.stdout + given.stderr
    b.start()
    try:
        body = {
            "point_id": backed_up["point"],
            "target_path": str(site.workdir / "restored-on-b"),
            "target_machine_id": b.machine_id(),
        }
        job = site.vault.ok("POST", f"/api/v1/items/{backed_up['item']['id']}/restore", json=body)
        done = site.vault.wait_job(job["id"], timeout=90)
    finally:
        b.stop()
    assert done["status"] == "Failed", done
    assert done["error"]["code"] == "RestoreSourcePassphraseWrong", done
    assert done["error"]["params"]["source"] == site.a.machine_id()
    assert not (site.workdir / "restored-on-b").exists()


# -- the CLI on a machine the vault does not know ---------------------------------------------------


def _cli_env(site: Site, root: Path, hostname: str) -> dict[str, str]:
    """A user's CLI environment: vault URL and token, no agent registration, this host name."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "no-agent").mkdir(exist_ok=True)
    env = base_env()
    env.update(
        KLUIS_VAULT_URL=site.vault.url,
        KLUIS_TOKEN=site.vault.admin_token,
        KLUIS_CLI_CONFIG=str(root / "cli.toml"),
        XDG_CACHE_HOME=str(root / "cache"),
        XDG_CONFIG_HOME=str(root / "config"),
        KLUIS_AGENT_CONFIG_DIR=str(root / "no-agent"),
        KLUIS_AGENT_HOSTNAME=hostname,
    )
    return env


def test_protect_on_a_machine_that_is_not_registered(site: Site) -> None:
    folder = site.workdir / "unregistered-data"
    folder.mkdir(exist_ok=True)
    env = _cli_env(site, site.workdir / "cli-unregistered", "codes-unknown-host")
    result = kluis("protect", "files", str(folder), "--policy", site.policy, "--json", env=env)
    error = assert_json_error(result, "CliMachineNotRegistered")
    assert error["params"]["host"] == "codes-unknown-host"
    assert error["params"]["url"] == site.vault.url
    # Nothing was protected.
    items = site.vault.ok("GET", "/api/v1/items")
    assert all(folder.as_posix() not in (i["spec"].get("paths") or []) for i in items)


# -- recovery points the vault does not have -------------------------------------------------------


def test_restore_of_a_recovery_point_that_does_not_exist(site: Site, backed_up: dict[str, Any]) -> None:
    env = _cli_env(site, site.workdir / "cli-restore", site.a.hostname)
    result = kluis("restore", BOGUS_POINT, "--target", str(site.workdir / "nowhere"), "--json", env=env)
    error = assert_json_error(result, "RecoveryPointNotFound")
    assert error["params"]["point"] == BOGUS_POINT
    # A real point asked for through an item it does not belong to is not found there either.
    other = site.vault.files_item(site.a.machine_id(), site.policy, [str(site.workdir)], "other-item")
    answer = site.vault.request(
        "POST",
        f"/api/v1/items/{other['id']}/restore",
        json={"point_id": backed_up["point"], "target_path": str(site.workdir / "nowhere")},
    )
    assert answer.status_code == all_entries()["RecoveryPointNotFound"].http_status, answer.text
    assert answer.json()["code"] == "RecoveryPointNotFound"
    assert answer.json()["params"]["point"] == backed_up["point"]
    assert not (site.workdir / "nowhere").exists()

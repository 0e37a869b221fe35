"""The vault-facing commands against a real vault and a real agent: protect, back up, restore, manage.

Each test drives ``kluis`` exactly as a user would and checks both the human output
(the facts people look for) and the ``--json`` shapes and exit codes scripts rely on.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kluis.catalog import lookup
from tests.agent.helpers import OTHER_PASSPHRASE, PASSPHRASE, AgentProc, make_tree
from tests.cli.conftest import World


def _policy(world: World) -> str:
    name = f"p-{secrets.token_hex(3)}"
    world.ok(
        "policy", "create", name, "--at", "03:15", "--timezone", "Europe/Amsterdam", "--keep-daily", "14"
    )
    return name


def _protect(world: World, paths: list[Path], *extra: str) -> dict[str, Any]:
    result = world.ok("protect", "files", *map(str, paths), "--policy", _policy(world), "--json", *extra)
    item: dict[str, Any] = result.json
    return item


def test_policy_create_list_show(world: World) -> None:
    created = world.ok(
        "policy",
        "create",
        "weekly-sun",
        "--schedule",
        "weekly",
        "--on",
        "sun",
        "--at",
        "22:00",
        "--keep-weekly",
        "8",
        "--json",
    ).json
    assert created["schedule"]["kind"] == "weekly" and created["schedule"]["weekdays"] == [6]
    assert created["retention"]["weekly"] == 8 and created["retention"].get("daily") is None
    listed = world.ok("policy", "list").stdout
    assert "weekly-sun" in listed and "weekly 6 22:00 (UTC)" in listed and "8 weekly" in listed
    shown = world.ok("policy", "show", created["id"][:32], "--json").json
    assert shown["name"] == "weekly-sun"
    # The vault's validation comes back as the catalog error with its exit code.
    bad = world.run("policy", "create", "bad", "--at", "25:00", "--json")
    assert bad.rc == lookup("ValidationFailed").exit_code == 2
    assert bad.error["code"] == "ValidationFailed" and "25:00" in bad.error["message"]
    missing = world.run("policy", "show", "no-such-policy")
    assert missing.rc == 4 and "ResourceNotFound" in missing.stderr and "no-such-policy" in missing.stderr


def test_items_set_policy(world: World) -> None:
    src = world.root / "data-moved"
    make_tree(src, files=1, size=100, seed=9)
    item = _protect(world, [src], "--name", "moving")
    later = world.ok("policy", "create", "later-0500", "--at", "05:00", "--json").json
    moved = world.ok("items", "set-policy", "moving", "--policy", "later-0500", "--json").json
    assert moved["id"] == item["id"] and moved["policy_id"] == later["id"] != item["policy_id"]
    assert moved["job"]["type"] == "ConfigureBackup"
    assert world.ok("items", "show", "moving", "--json").json["policy_id"] == later["id"]
    unknown = world.run("items", "set-policy", "moving", "--policy", "no-such-policy")
    assert unknown.rc == 4 and "ResourceNotFound" in unknown.stderr


def test_backup_restore_round_trip(world: World) -> None:
    src = world.root / "data-rt"
    content = make_tree(src, files=12, size=32 * 1024, seed=5)
    (src / "skip.tmp").write_text("left out")
    os.symlink("d0", src / "link")
    item = _protect(world, [src], "--exclude", "*.tmp", "--name", "round-trip")
    assert item["machine_id"] == world.agent.machine_id()
    assert item["spec"] == {"paths": [str(src)], "exclude": ["*.tmp"]} and item["state"] == "Protected"
    listed = world.ok("items", "list").stdout
    assert "round-trip" in listed and "cli-host" in listed and "Protected" in listed

    backup = world.ok("backup", "now", "round-trip", "--wait", "--retain-until", "2099-12-31", "--json").json
    assert backup["status"] == "Completed" and backup["type"] == "Backup"
    point = backup["point"]
    assert point["item_id"] == item["id"] and point["retain_until"].startswith("2099-12-31")
    points = world.ok("points", "list", "round-trip", "--json").json
    assert [p["id"] for p in points] == [point["id"]]
    assert point["id"][:12] in world.ok("points", "list", item["id"][:8]).stdout

    shown = world.ok("jobs", "show", backup["id"][:10]).stdout
    assert "Completed" in shown and "round-trip" in shown and "files" in shown
    assert backup["id"][:12] in world.ok("jobs", "list", "--item", "round-trip").stdout

    target = world.root / "restored-rt"
    restored = world.ok("restore", point["id"][:8], "--target", str(target), "--wait", "--json").json
    assert restored["status"] == "Completed" and restored["type"] == "Restore"
    for rel, data in content.items():
        assert (target / src.relative_to("/") / rel).read_bytes() == data
    assert not (target / src.relative_to("/") / "skip.tmp").exists()
    assert os.readlink(target / src.relative_to("/") / "link") == "d0"
    # Original location is the default: a deleted file comes back where it was.
    victim = next(iter(content))
    (src / victim).unlink()
    world.ok("restore", point["id"], str(src / victim), "--wait")
    assert (src / victim).read_bytes() == content[victim]
    # --conflict copy keeps both the changed file and the restored one.
    (src / victim).write_bytes(b"changed")
    world.ok("restore", point["id"], str(src / victim), "--conflict", "copy", "--wait")
    assert (src / victim).read_bytes() == b"changed"
    copies = [
        p
        for p in (src / victim).parent.iterdir()
        if p.name != Path(victim).name and p.name.startswith(Path(victim).name)
    ]
    assert len(copies) == 1 and copies[0].read_bytes() == content[victim]
    # --conflict skip leaves the local file alone and adds nothing beside it.
    world.ok("restore", point["id"], str(src / victim), "--conflict", "skip", "--wait")
    assert (src / victim).read_bytes() == b"changed"
    assert len([p for p in (src / victim).parent.iterdir() if p.name.startswith(Path(victim).name)]) == 2
    # A path that is not in the point: the job completes with a warning that names it as typed.
    typo = str(src / "no-such-file")
    elsewhere = str(world.root / "r-typo")
    missed = world.ok("restore", point["id"], typo, "--target", elsewhere, "--wait", "--json")
    assert missed.json["status"] == "CompletedWithWarnings"
    shown = world.ok("jobs", "show", missed.json["id"]).stdout
    assert "1 warnings" in shown and "RestorePathNotInPoint" in shown and typo in shown.replace("\n", "")


def test_backup_progress_output_and_exit_codes(world: World) -> None:
    src = world.root / "data-exit"
    make_tree(src, files=3, size=1024, seed=9)
    item = _protect(world, [src])
    human = world.ok("backup", "now", item["id"][:10], "--wait")
    assert "Completed" in human.stdout and "Recovery point" in human.stdout
    # The source disappears: the job fails with a coded error, the command exits with its code,
    # and the vault raises an alert that `kluis alerts list` shows.
    for child in sorted(src.rglob("*"), reverse=True):
        child.unlink() if not child.is_dir() else child.rmdir()
    src.rmdir()
    failed = world.run("backup", "now", item["id"], "--wait")
    code = "BackupSourceMissing"
    assert failed.rc == lookup(code).exit_code, failed.stdout + failed.stderr
    assert code in failed.stderr and str(src) in failed.stderr and "Failed" in failed.stdout
    alerts = world.ok("alerts", "list", "--json").json
    assert any(a["code"] == code and a["item_id"] == item["id"] for a in alerts)
    assert code in world.ok("alerts", "list", "--status", "Active").stdout
    # Cancelling a job that already ended is refused with the catalog's code.
    last = world.ok("jobs", "list", "--item", item["id"], "--json").json[0]
    refused = world.run("jobs", "cancel", last["id"], "--json")
    assert refused.rc == 8 and refused.error["code"] == "JobNotInProgress"


@pytest.fixture(scope="module")
def second(world: World) -> Iterator[AgentProc]:
    """A second registered machine; its daemon runs only where a test starts it."""
    agent = AgentProc(world.root / "agent2", hostname="cli-host-2", scratch=world.root / "scratch2")
    registered = agent.register(world.vault.credentials_file(world.root / "creds2"), OTHER_PASSPHRASE)
    assert registered.rc == 0, registered.stdout + registered.stderr
    agent.tune(poll_wait=3)
    yield agent
    agent.stop()


def test_cancel_a_queued_job(world: World, second: AgentProc) -> None:
    # The second machine's agent is not running, so the job waits in the queue.
    item = world.ok(
        "protect", "files", "/srv/never", "--machine", "cli-host-2", "--policy", _policy(world), "--json"
    ).json
    assert item["machine_id"] == second.machine_id()
    job = world.ok("backup", "now", item["id"], "--json").json
    assert job["status"] == "InProgress" and job["machine_id"] == second.machine_id()
    cancelled = world.ok("jobs", "cancel", job["id"][:12], "--json").json
    assert cancelled["status"] == "Cancelled"
    assert "Cancelled" in world.ok("jobs", "show", job["id"]).stdout
    relative = world.run("protect", "files", "rel/path", "--machine", "cli-host-2", "--policy", "x", "--json")
    assert relative.rc == 2 and "absolute" in relative.error["message"]


def test_restore_on_another_machine(world: World, second: AgentProc) -> None:
    src = world.root / "data-elsewhere"
    content = make_tree(src, files=4, size=8 * 1024, seed=6)
    item = _protect(world, [src])
    point = world.ok("backup", "now", item["id"], "--wait", "--json").json["point"]
    # The other machine needs this machine's passphrase once; then the restore runs there.
    pfile = world.root / "source-pass"
    pfile.write_text(PASSPHRASE + "\n")
    given = second.cli("source-passphrase", world.agent.machine_id(), "--passphrase-file", str(pfile))
    assert given.rc == 0, given.stdout + given.stderr
    second.start()
    target = world.root / "on-second"
    job = world.ok(
        "restore", point["id"], "--machine", "cli-host-2", "--target", str(target), "--wait", "--json"
    ).json
    assert job["status"] == "Completed" and job["machine_id"] == second.machine_id()
    for rel, data in content.items():
        assert (target / src.relative_to("/") / rel).read_bytes() == data


def test_stop_undelete_resume(world: World) -> None:
    src = world.root / "data-stop"
    make_tree(src, files=2, size=1024, seed=4)
    item = _protect(world, [src], "--name", "stoppable")
    stopped = world.ok("stop-protection", "stoppable", "--json").json
    assert stopped["state"] == "ProtectionStopped"
    refused = world.run("backup", "now", "stoppable", "--json")
    assert refused.error["code"] == "UserErrorBcmDatasourceNotPresent"
    assert refused.rc == lookup("UserErrorBcmDatasourceNotPresent").exit_code
    deleted = world.ok("stop-protection", "stoppable", "--delete-data", "--yes", "--json").json
    assert deleted["state"] == "SoftDeleted" and deleted["purge_after"]
    human = world.ok("undelete", item["id"][:8])
    assert "ProtectionStopped" in human.stdout
    resumed = world.ok("resume-protection", "stoppable", "--json").json
    assert resumed["state"] == "Protected" and resumed["policy_id"] == item["policy_id"]
    twice = world.run("resume-protection", "stoppable")
    assert twice.rc == 8 and "ItemStateInvalid" in twice.stderr


def test_names_and_errors(world: World) -> None:
    # Two items with one name on one machine are not allowed; an ambiguous prefix is refused.
    src = world.root / "data-names"
    src.mkdir()
    _protect(world, [src], "--name", "twin")
    again = world.run("protect", "files", str(src), "--policy", _policy(world), "--name", "twin", "--json")
    assert again.error["code"] == "ResourceExists" and again.rc == 8
    unknown = world.run("backup", "now", "no-such-item", "--json")
    assert unknown.rc == 4 and unknown.error["code"] == "ResourceNotFound"
    missing = world.run("protect", "files", str(world.root / "nope"), "--policy", "x", "--json")
    assert missing.error["code"] == "BackupSourceMissing"
    empty = world.run("protect", "files", "", "--policy", _policy(world), "--json")  # an unset variable
    assert empty.error["code"] == "ValidationFailed" and "empty path" in empty.error["message"]
    bad_token = world.run("items", "list", KLUIS_TOKEN="kluis_u_not-a-token")
    assert bad_token.rc == 3 and "AuthTokenInvalid" in bad_token.stderr


def test_login_config_and_connection_errors(world: World) -> None:
    env_without = {"KLUIS_VAULT_URL": "", "KLUIS_TOKEN": ""}
    nothing = world.run("items", "list", "--json", **env_without)
    assert nothing.rc == 3 and nothing.error["code"] == "CliNotLoggedIn"
    logged = world.run(
        "login", "--vault", world.vault.url, "--token", world.vault.admin_token, "--json", **env_without
    )
    assert logged.rc == 0, logged.stderr
    assert logged.json["user"] == "admin" and logged.json["vault_name"] == world.vault.name
    config = Path(logged.json["config"])
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and world.vault.admin_token in config.read_text()
    assert world.run("items", "list", **env_without).rc == 0
    # A closed port names the step that failed.
    from tests.support.ports import closed_port

    down = world.run("items", "list", "--vault", f"http://127.0.0.1:{closed_port()}", "--json")
    assert down.rc == 7 and down.error["code"] == "CliVaultUnreachable"
    assert down.error["params"]["stage"] == "TCP connect"
    # Something that is not a vault answers: not mistaken for one.
    with _plain_web_server() as url:
        odd = world.run("items", "list", "--vault", url, "--json")
    assert odd.rc == 7 and odd.error["code"] == "VaultUnexpectedResponse"
    assert odd.error["params"]["status"] == 404
    machine_token = world.run(
        "login", "--vault", world.vault.url, "--token", _machine_token(world), **env_without
    )
    assert machine_token.rc == 2 and "machine token" in machine_token.stderr
    assert world.ok("logout").rc == 0 and not config.exists()


@contextlib.contextmanager
def _plain_web_server() -> Iterator[str]:
    """An ordinary web server on loopback that answers every request with an HTML 404."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.RequestHandlerClass.log_message = lambda *_a: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/nothing-here"
    finally:
        server.shutdown()
        server.server_close()


def _machine_token(world: World) -> str:
    import tomllib

    return str(tomllib.loads(world.agent.config_file.read_text())["machine"]["token"])


@pytest.mark.parametrize(
    "command", [["items", "list"], ["policy", "list"], ["jobs", "list"], ["alerts", "list"]]
)
def test_json_lists(world: World, command: list[str]) -> None:
    data = world.ok(*command, "--json").json
    assert isinstance(data, list)


needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing: this kernel or container has no FUSE"
)


@needs_fuse
def test_mount_a_vault_point_with_the_agents_key(world: World) -> None:
    from kluis.agent.mount import active_mounts
    from tests.cli.conftest import unmount_quietly

    src = world.root / "data-mount"
    content = make_tree(src, files=3, size=200 * 1024, seed=8)
    item = _protect(world, [src])
    point = world.ok("backup", "now", item["id"], "--wait", "--json").json["point"]
    mnt = world.root / "mnt-vault"
    mnt.mkdir()
    try:
        # No passphrase given: on its own machine the agent's KEK file unlocks the point.
        mounted = world.ok("mount", point["id"][:10], str(mnt), "--idle-timeout", "60", "--json").json
        assert mounted["item"] == item["id"] and mounted["point"] == point["id"]
        for rel, data in content.items():
            assert (mnt / src.relative_to("/") / rel).read_bytes() == data
        # Recorded in the agent's scratch folder, where its job runner looks.
        assert [m.point for m in active_mounts(world.agent.scratch, item["id"])] == [point["id"]]
        world.ok("unmount", str(mnt))
        assert not os.path.ismount(mnt)
        # Anywhere else (no agent of that machine here) the machine's passphrase unlocks it.
        elsewhere = {"KLUIS_AGENT_CONFIG_DIR": str(world.root / "no-agent-here")}
        wrong = world.root / "wrong-pass"
        wrong.write_text("certainly not the passphrase\n")
        refused = world.run(
            "mount", point["id"], str(mnt), "--passphrase-file", str(wrong), "--json", **elsewhere
        )
        assert refused.rc == 3 and refused.error["code"] == "RepoPassphraseIncorrect"
        right = world.root / "right-pass"
        right.write_text(PASSPHRASE + "\n")
        again = world.run("mount", point["id"], str(mnt), "--passphrase-file", str(right), **elsewhere)
        assert again.rc == 0, again.stdout + again.stderr
        first = sorted(content)[0]
        assert (mnt / src.relative_to("/") / first).read_bytes() == content[first]
        assert active_mounts(world.agent.scratch, item["id"]) == []  # not this machine's agent
        world.ok("unmount", str(mnt))
    finally:
        unmount_quietly(mnt)


@needs_fuse
def test_completed_with_warnings_shows_skipped_files(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that cannot be read (EIO) is skipped; `jobs show` lists it with its code and the log."""
    from kluis.engine.backup import FileBackup
    from kluis.engine.format import pack_name
    from kluis.engine.repository import Repository
    from kluis.stores import LocalStore
    from tests.cli.conftest import unmount_quietly

    # The unreadable file: a FUSE file (our own mount of a local repository) whose pack is gone.
    monkeypatch.setenv("KLUIS_PACK_SIZE", "4096")  # one blob per pack, so one pack can go missing
    source = world.root / "eio-source"
    source.mkdir()
    (source / "fine.txt").write_text("readable\n")
    broken = os.urandom(64 * 1024)
    (source / "broken.bin").write_bytes(broken)
    repo, _w, _k = Repository.init(LocalStore(world.root / "eio-repo"), PASSPHRASE)
    FileBackup(repo).run([str(source)])
    entry = repo.index.get(repo.codec().chunk_id(broken))
    assert entry is not None
    repo.store.delete(pack_name(entry.pack))
    pfile = world.root / "eio-pass"
    pfile.write_text(PASSPHRASE + "\n")
    mnt = world.root / "mnt-eio"
    mnt.mkdir()
    try:
        world.ok(
            "mount",
            "latest",
            str(mnt),
            "--repo",
            str(world.root / "eio-repo"),
            "--passphrase-file",
            str(pfile),
        )
        protected = mnt / source.relative_to("/")
        item = _protect(world, [protected])
        job = world.ok("backup", "now", item["id"], "--wait", "--json").json
        assert job["status"] == "CompletedWithWarnings", job
        assert job["point"] is not None  # the readable files are in a recovery point
        shown = world.ok("jobs", "show", job["id"]).stdout
        assert "1 files skipped" in shown and "failed-files log:" in shown
        assert "0x80070570" in shown and "broken.bin" in shown
        summary = world.ok("jobs", "show", job["id"], "--json").json["warning_summary"]
        assert summary["skipped"] == 1 and summary["entries"][0]["code"] == "0x80070570"
        log = Path(summary["failed_files_log"])
        assert log.exists() and "broken.bin" in log.read_text()
    finally:
        world.run("unmount", str(mnt))
        unmount_quietly(mnt)


@needs_fuse
def test_a_backup_waits_while_its_point_is_mounted(world: World) -> None:
    from tests.cli.conftest import unmount_quietly

    src = world.root / "data-wait"
    make_tree(src, files=2, size=4096, seed=11)
    item = _protect(world, [src])
    first = world.ok("backup", "now", item["id"], "--wait", "--json").json
    mnt = world.root / "mnt-wait"
    mnt.mkdir()
    try:
        world.ok("mount", first["point"]["id"], str(mnt), "--idle-timeout", "60")
        job = world.ok("backup", "now", item["id"], "--json").json
        deadline = time.monotonic() + 20
        while True:
            shown = world.ok("jobs", "show", job["id"], "--json").json
            if "mounted" in str((shown.get("progress") or {}).get("message", "")):
                break
            assert shown["status"] == "InProgress" and time.monotonic() < deadline, shown
            time.sleep(0.3)
        assert "is mounted" in world.ok("jobs", "show", job["id"]).stdout
        world.ok("unmount", str(mnt))
        done = world.ok("jobs", "show", job["id"], "--json").json
        deadline = time.monotonic() + 30
        while done["status"] == "InProgress" and time.monotonic() < deadline:
            time.sleep(0.3)
            done = world.ok("jobs", "show", job["id"], "--json").json
        assert done["status"] == "Completed", done
    finally:
        unmount_quietly(mnt)

"""``kluis mount POINT DIR`` and ``kluis unmount DIR``: browse a recovery point as a read-only folder.

Without ``--repo`` the point is read from the vault with your user token (Operator or
more): on the machine the point belongs to, the agent's KEK file unlocks it; anywhere
else the machine's passphrase does (``--passphrase-file``, ``KLUIS_PASSPHRASE`` or a
prompt). With ``--repo`` a repository is read directly, as ``kluis repo`` does.

The mount runs in the background and unmounts itself after ``--idle-timeout``
seconds without use (default 10 minutes), or with ``kluis unmount DIR``. While it is
mounted, the agent on this machine holds back scheduled backups of the item: the
mount is recorded in the agent's scratch folder (see ``kluis.agent.mount``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from kluis.catalog import KluisError
from kluis.cli.client import VaultClient, agent_settings, connect, tls_verify
from kluis.cli.common import JsonOpt, TokenOpt, VaultOpt
from kluis.cli.output import out, print_json, run_command
from kluis.cli.passphrase import read_passphrase_file

app = typer.Typer()

DEFAULT_IDLE = 600.0


@dataclass
class MountPlan:
    """Everything the serving process needs, decided before it starts."""

    point_id: str
    item_id: str | None
    mountpoint: str
    idle_timeout: float
    scratch: Path | None
    open_repo: Callable[[], Any]
    log_file: Path | None


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kluis"


def _passphrase(path: Path | None) -> str:
    if path is not None:
        return read_passphrase_file(path)
    env = os.environ.get("KLUIS_PASSPHRASE")
    if env:
        return env
    return str(typer.prompt("Passphrase of the machine the point belongs to", hide_input=True))


def _fail(point: str, mountpoint: str, reason: str) -> KluisError:
    return KluisError("RecoveryMountFailed", point=point, mountpoint=mountpoint, reason=reason)


def _require_fuse(point: str, mountpoint: str) -> None:
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        raise _fail(point, mountpoint, "pyfuse3 is not installed (pip install 'kluis[mount]')") from None


def _local_plan(
    point: str,
    mountpoint: str,
    repo_url: str,
    passphrase_file: Path | None,
    scratch: Path | None,
    idle: float,
) -> MountPlan:
    """A mount of a repository reached directly (a directory or a store URL)."""
    from kluis.engine.repository import Repository
    from kluis.stores import open_store

    store = open_store(repo_url)
    config = Repository.read_config(store)
    passphrase = _passphrase(passphrase_file)
    cache = _cache_root() / config["id"]
    repo = Repository.open(store, passphrase=passphrase, cache_dir=cache)
    point_id = repo.resolve_point(point)
    header, _manifest = repo.load_point(point_id)
    item = header.get("item")
    return MountPlan(
        point_id=point_id,
        item_id=str(item) if item else None,
        mountpoint=mountpoint,
        idle_timeout=idle,
        scratch=scratch,
        open_repo=lambda: repo,
        log_file=cache / "mount.log",
    )


def _vault_plan(
    client: VaultClient,
    point: str,
    mountpoint: str,
    passphrase_file: Path | None,
    scratch: Path | None,
    idle: float,
) -> MountPlan:
    """A mount of a point in the vault, read over the object API with the user's token."""
    from kluis.engine.repository import Repository
    from kluis.stores.vault import VaultStore

    found = client.point(point)
    machine_id = str(found["machine_id"])
    agent = agent_settings()
    kek = _own_kek(machine_id) if passphrase_file is None else None
    passphrase = _passphrase(passphrase_file) if kek is None else None
    conn = client.conn
    verify = tls_verify(conn)

    def open_repo() -> Repository:
        store = VaultStore(conn.url, machine_id, conn.token, repo_machine_id=machine_id, verify=verify)
        config = Repository.read_config(store)
        return Repository.open(store, passphrase=passphrase, kek=kek, cache_dir=_cache_root() / config["id"])

    own_scratch = scratch or (
        Path(agent["scratch"]) if agent.get("machine_id") == machine_id and agent.get("scratch") else None
    )
    return MountPlan(
        point_id=str(found["id"]),
        item_id=found.get("item_id"),
        mountpoint=mountpoint,
        idle_timeout=idle,
        scratch=own_scratch,
        open_repo=open_repo,
        log_file=_cache_root() / "mount.log",
    )


def _own_kek(machine_id: str) -> bytes | None:
    """This agent's KEK when the point is this machine's and this user may read the KEK file."""
    try:
        from kluis.agent.config import AgentConfig, config_dir
        from kluis.agent.keys import own_kek

        cfg = AgentConfig.load(config_dir())
        if cfg.machine_id != machine_id:
            return None
        return own_kek(cfg)
    except (KluisError, OSError):
        return None


def _serve(plan: MountPlan, on_ready: Callable[[], None]) -> None:
    """Open the repository and serve the mount in this process until it ends."""
    from kluis.agent.mount import remove_marker, write_marker
    from kluis.engine.fusefs import RecoveryPointFS, serve

    try:
        repo = plan.open_repo()
        if repo.load_point(plan.point_id)[0].get("kind") == "disk":
            fs = None  # a disk point: its file systems are mounted through loop devices (diskfs)
        else:
            fs = RecoveryPointFS(repo, plan.point_id)
    except KluisError as exc:
        if exc.code != "RecoveryMountFailed":
            raise
        raise _fail(plan.point_id, plan.mountpoint, str(exc.params.get("reason", exc.message))) from None
    marker: list[Path] = []

    def ready(*session: Any) -> None:
        # A disk point's DIR is no mount itself; the marker names its first file system.
        where = next(iter(session[0].mounts), plan.mountpoint) if session else plan.mountpoint
        if plan.scratch is not None and plan.item_id:
            try:
                marker.append(
                    write_marker(plan.scratch, plan.item_id, plan.point_id, where, plan.idle_timeout)
                )
            except OSError as exc:
                logging.getLogger("kluis.mount").warning(
                    "cannot record the mount in %s: %s", plan.scratch, exc
                )
        on_ready()

    try:
        if fs is None:
            from kluis.engine.diskfs import serve_disks

            serve_disks(repo, plan.point_id, plan.mountpoint, idle_timeout=plan.idle_timeout, on_ready=ready)
        else:
            serve(fs, plan.mountpoint, idle_timeout=plan.idle_timeout, on_ready=ready)
    finally:
        for path in marker:
            remove_marker(path)


def _log_to(path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=str(path),
        level=logging.INFO,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    # One line per chunk request would drown what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _background(plan: MountPlan) -> None:
    """Serve the mount in a detached child; return once it is mounted (or raise why not)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: serves the mount, tells the parent how mounting went
        os.close(read_end)
        status = 0
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            _log_to(plan.log_file)

            def ready() -> None:
                os.write(write_end, json.dumps({"ok": True, "pid": os.getpid()}).encode())
                os.close(write_end)

            _serve(plan, ready)
        except KluisError as exc:
            _tell(write_end, {"error": exc.to_dict()})
            status = 1
        except BaseException as exc:  # anything else still reaches the user as a coded error
            logging.getLogger("kluis.mount").exception("mount failed")
            _tell(write_end, {"error": _fail(plan.point_id, plan.mountpoint, repr(exc)).to_dict()})
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    while True:
        data = os.read(read_end, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(read_end)
    try:
        answer = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        answer = {}
    if answer.get("ok"):
        return
    if "error" in answer:
        raise KluisError.from_dict(answer["error"])
    os.waitpid(pid, 0)
    raise _fail(plan.point_id, plan.mountpoint, "the mount process ended without a word; see its log")


def _tell(fd: int, message: dict[str, Any]) -> None:
    try:
        os.write(fd, json.dumps(message).encode())
        os.close(fd)
    except OSError:
        pass  # the ready message went out already; the parent is gone


@app.command("mount")
def mount(
    point: Annotated[str, typer.Argument(help="Recovery point id or id prefix ('latest' with --repo).")],
    mountpoint: Annotated[Path, typer.Argument(help="An empty directory to show the files in.")],
    repo: Annotated[
        str | None, typer.Option("--repo", "-r", help="Read this repository directly instead of the vault.")
    ] = None,
    passphrase_file: Annotated[
        Path | None, typer.Option("--passphrase-file", help="File holding the machine's passphrase.")
    ] = None,
    idle_timeout: Annotated[
        float, typer.Option("--idle-timeout", help="Unmount after this many seconds without use.")
    ] = DEFAULT_IDLE,
    foreground: Annotated[
        bool, typer.Option("--foreground", "-f", help="Stay in the foreground until unmounted.")
    ] = False,
    scratch: Annotated[
        Path | None, typer.Option("--scratch", help="The agent's scratch folder (records the mount).")
    ] = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mount a recovery point read-only on DIR, to browse and copy files."""

    def body() -> None:
        target = str(mountpoint.absolute())
        _require_fuse(point, target)
        from kluis.engine.fusefs import check_mountpoint

        check_mountpoint(point, target)
        if idle_timeout <= 0:
            raise KluisError("ValidationFailed", reason="--idle-timeout must be positive")
        if repo is not None:
            plan = _local_plan(point, target, repo, passphrase_file, scratch, idle_timeout)
        else:
            with connect(vault, token) as client:
                plan = _vault_plan(client, point, target, passphrase_file, scratch, idle_timeout)
        info = {
            "point": plan.point_id,
            "item": plan.item_id,
            "mountpoint": target,
            "idle_timeout": idle_timeout,
            "log": str(plan.log_file) if plan.log_file else None,
        }
        if foreground:

            def ready() -> None:
                if as_json:
                    print_json({**info, "pid": os.getpid()})
                else:
                    out.print(f"Recovery point {plan.point_id} mounted on {target}; Ctrl-C unmounts.")
                sys.stdout.flush()

            _serve(plan, ready)
            return
        _background(plan)
        if as_json:
            print_json(info)
            return
        out.print(f"Recovery point [bold]{plan.point_id}[/] is mounted read-only on {target}.")
        idle = f"{idle_timeout / 60:g} minutes" if idle_timeout >= 60 else f"{idle_timeout:g} seconds"
        out.print(f"It unmounts itself after {idle} without use.")
        out.print(f"Unmount it now with: kluis unmount {target}")

    run_command(body, as_json=as_json)


def _stop_disk_mount(target: str) -> bool:
    """End a disk point's mount on ``target`` (its process undoes mounts and loop devices)."""
    try:
        from kluis.engine.diskfs import find_session, stop_session
    except ImportError:  # without the mount extra there is no disk mount to stop
        return False
    if find_session(target) is None:
        return False
    stop_session(target)
    return True


@app.command("unmount")
def unmount(mountpoint: Annotated[Path, typer.Argument(help="Where a recovery point is mounted.")]) -> None:
    """Unmount a recovery point mounted with `kluis mount`."""

    def body() -> None:
        target = str(mountpoint.absolute())
        if _stop_disk_mount(target):
            out.print(f"Unmounted {target}.")
            return
        if not os.path.ismount(target):
            raise _fail("-", target, "nothing is mounted there")
        tool = shutil.which("fusermount3") or shutil.which("fusermount")
        command = [tool, "-u", target] if tool else ["umount", target]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise _fail("-", target, done.stderr.strip() or f"{command[0]} exited with {done.returncode}")
        out.print(f"Unmounted {target}.")

    run_command(body)

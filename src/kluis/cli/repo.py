"""``kluis repo``: work on a repository directly, without a vault (local disks, tests, benchmarks).

The passphrase comes from ``--passphrase-file``, the ``KLUIS_PASSPHRASE`` variable,
or a prompt. The checksum store and failed-files logs go into the scratch folder
(``--scratch``, default ``~/.cache/kluis/<repository id>``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kluis.catalog import KluisError
from kluis.cli.output import human_bytes, out, print_json, progress_bar, run_command
from kluis.cli.passphrase import read_passphrase_file
from kluis.engine.backup import BackupOptions, FileBackup
from kluis.engine.checksum_store import ChecksumStore
from kluis.engine.repository import Repository
from kluis.engine.restore import CONFLICT_MODES, RestoreOptions, Restorer
from kluis.engine.verify import verify
from kluis.stores import open_store

app = typer.Typer(help="Work on a repository directly (no vault).", no_args_is_help=True)

RepoOpt = Annotated[
    str, typer.Option("--repo", "-r", help="Store URL or path of the repository.", envvar="KLUIS_REPO")
]
PassFileOpt = Annotated[Path | None, typer.Option("--passphrase-file", help="File holding the passphrase.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ScratchOpt = Annotated[Path | None, typer.Option("--scratch", help="Scratch folder for caches and logs.")]


def _passphrase(path: Path | None, *, confirm: bool = False) -> str:
    if path is not None:
        return read_passphrase_file(path)
    env = os.environ.get("KLUIS_PASSPHRASE")
    if env:
        return env
    return str(typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm))


def _scratch_path(scratch: Path | None, repo_id: str) -> Path:
    """``--scratch``, else the repository's own folder under ``$XDG_CACHE_HOME/kluis``."""
    return scratch or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kluis" / repo_id


def _scratch(repo: Repository, scratch: Path | None) -> Path:
    """The scratch folder, created if needed."""
    return _usable_folder(_scratch_path(scratch, repo.config["id"]))


def _usable_folder(path: Path) -> Path:
    """``path``, created if needed; ScratchFolderInvalid when it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "a file is in the way" if isinstance(exc, FileExistsError) else exc.strerror
        raise KluisError("ScratchFolderInvalid", path=str(path), reason=reason) from None
    return path


def _open(url: str, passfile: Path | None, scratch: Path | None = None) -> Repository:
    store = open_store(url)
    config = Repository.read_config(store)
    cache = _scratch_path(scratch, config["id"])
    if scratch is not None:
        _usable_folder(scratch)  # checked before the passphrase is asked for
    return Repository.open(store, passphrase=_passphrase(passfile), cache_dir=cache)


@app.command("init")
def init(repo: RepoOpt, passphrase_file: PassFileOpt = None, json_out: JsonOpt = False) -> None:
    """Create a new, empty repository."""

    def body() -> None:
        store = open_store(repo)
        passphrase = _passphrase(passphrase_file, confirm=True)
        if len(passphrase) < 16:
            raise KluisError("ValidationFailed", reason="the passphrase must have at least 16 characters")
        r, wrapped, _kek = Repository.init(store, passphrase)
        info = {"repository": r.config["id"], "location": store.url, "fingerprint": wrapped.fingerprint}
        if json_out:
            print_json(info)
        else:
            out.print(f"Created repository {info['repository']} at {store.url}")
            out.print("[bold yellow]Keep the passphrase safe: without it nobody can read this data.[/]")

    run_command(body, as_json=json_out)


@app.command("backup")
def backup(
    paths: Annotated[list[str], typer.Argument(help="Files and folders to back up.")],
    repo: RepoOpt,
    passphrase_file: PassFileOpt = None,
    scratch: ScratchOpt = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", "-e", help="Glob to leave out.")] = None,
    exclude_if_present: Annotated[
        list[str] | None, typer.Option("--exclude-if-present", help="Skip folders containing this file.")
    ] = None,
    one_file_system: Annotated[bool, typer.Option("--one-file-system", "-x")] = False,
    threads: Annotated[int, typer.Option(min=0, help="Worker threads (default: cores, at most 4).")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Back up files and folders into a new recovery point."""

    def body() -> None:
        r = _open(repo, passphrase_file, scratch)
        folder = _scratch(r, scratch)
        cache = ChecksumStore(folder / "checksums.db")
        options = BackupOptions(
            excludes=exclude or [],
            exclude_if_present=exclude_if_present or [],
            one_file_system=one_file_system,
        )
        if threads:
            options.threads = threads
        last = cache.get_meta("last_backup_bytes")
        with progress_bar("Backing up", enabled=not json_out) as update:
            result = FileBackup(
                r,
                checksum_store=cache,
                options=options,
                progress=update,
                failed_log=folder / "failed-files.log",
                estimate_bytes=int(last) if last else None,
            ).run(paths)
        cache.close()
        if json_out:
            print_json(result.as_dict())
            return
        out.print(
            f"Recovery point [bold]{result.point_id}[/] {result.status}: {result.files} files, "
            f"{human_bytes(result.bytes)} read, {human_bytes(result.new_bytes)} new, "
            f"{human_bytes(result.stored_bytes)} stored in {result.seconds:.1f} s"
        )
        if result.warnings:
            out.print(f"[yellow]{result.warnings} files skipped; see {result.failed_files_log}[/]")

    run_command(body, as_json=json_out)


@app.command("points")
def points(repo: RepoOpt, passphrase_file: PassFileOpt = None, json_out: JsonOpt = False) -> None:
    """List recovery points."""

    def body() -> None:
        r = _open(repo, passphrase_file)
        items = r.list_points()
        if json_out:
            print_json([{"id": p.id, "time": p.time, "kind": p.kind, **p.header} for p in items])
            return
        table = Table("id", "time", "kind", "status", "size", "files")
        for p in items:
            table.add_row(
                p.id,
                p.time,
                p.kind,
                str(p.header.get("status", "")),
                human_bytes(float(p.header.get("size", 0) or 0)),
                str(p.header.get("files", "")),
            )
        out.print(table)

    run_command(body, as_json=json_out)


@app.command("restore")
def restore(
    point: Annotated[str, typer.Argument(help="Recovery point id (a unique prefix, or 'latest').")],
    repo: RepoOpt,
    target: Annotated[Path, typer.Option("--target", "-t", help="Folder to restore into.")],
    include: Annotated[
        list[str] | None, typer.Option("--include", "-i", help="Path or glob to restore.")
    ] = None,
    conflict: Annotated[str, typer.Option(help="overwrite, skip or copy (keep both).")] = "overwrite",
    passphrase_file: PassFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Restore a recovery point (or selected paths) into a folder."""

    def body() -> None:
        if conflict not in CONFLICT_MODES:
            raise KluisError(
                "ValidationFailed", reason=f"--conflict must be one of {', '.join(CONFLICT_MODES)}"
            )
        r = _open(repo, passphrase_file)
        point_id = r.resolve_point(point)
        options = RestoreOptions(include=include or [], conflict=conflict)
        with progress_bar("Restoring", enabled=not json_out) as update:
            result = Restorer(r, point_id, target, options=options, progress=update).run()
        if json_out:
            print_json(result.as_dict())
            return
        out.print(
            f"Restored {result.files} files ({human_bytes(result.bytes)}) into {result.target} "
            f"in {result.seconds:.1f} s: {result.status}"
        )
        for w in result.warnings[:20]:
            out.print(f"[yellow]{w['code']}[/]: {w['message']}")

    run_command(body, as_json=json_out)


@app.command("verify")
def verify_cmd(
    repo: RepoOpt,
    passphrase_file: PassFileOpt = None,
    read_data: Annotated[bool, typer.Option("--read-data", help="Decrypt and re-hash every pack.")] = False,
    subset: Annotated[float | None, typer.Option(help="Read only this percentage of packs.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check the repository's structure, and its data with --read-data."""

    def body() -> None:
        r = _open(repo, passphrase_file)
        with progress_bar("Verifying", enabled=not json_out) as update:
            report = verify(r, read_data=read_data, subset_percent=subset, progress=update)
        if json_out:
            print_json(report.as_dict())
        else:
            out.print(
                f"{report.points} recovery points, {report.packs_read} packs read: "
                + ("[green]no problems[/]" if report.ok else f"[red]{len(report.problems)} problems[/]")
            )
            for p in report.problems[:50]:
                out.print(f"[red]{p['code']}[/]: {p['message']}")
            for point_id, paths in report.affected.items():
                out.print(f"Affected recovery point {point_id}: {', '.join(paths[:10])}")
        if not report.ok:
            raise SystemExit(5)

    run_command(body, as_json=json_out)


@app.command("passwd")
def passwd(
    repo: RepoOpt,
    passphrase_file: PassFileOpt = None,
    new_passphrase_file: Annotated[Path | None, typer.Option("--new-passphrase-file")] = None,
) -> None:
    """Change the passphrase: the keys are re-wrapped, no data is rewritten."""

    def body() -> None:
        r = _open(repo, passphrase_file)
        if new_passphrase_file is not None:
            new = read_passphrase_file(new_passphrase_file)
        else:
            new = str(typer.prompt("New passphrase", hide_input=True, confirmation_prompt=True))
        if len(new) < 16:
            raise KluisError("ValidationFailed", reason="the passphrase must have at least 16 characters")
        old_keys = [name for name, _ in Repository.key_files(r.store)]
        name, _wrapped, _kek = r.add_key(new)
        for old in old_keys:
            r.store.delete(old)
        out.print(f"Passphrase changed (key file {name}).")

    run_command(body)


@app.command("backup-disk")
def backup_disk(
    source: Annotated[Path, typer.Argument(help="Block device or disk image file to back up.")],
    repo: RepoOpt,
    passphrase_file: PassFileOpt = None,
    scratch: ScratchOpt = None,
    name: Annotated[str, typer.Option("--name", help="The disk's name in the recovery point.")] = "disk0",
    full: Annotated[
        bool, typer.Option("--full", help="Read every block; do not compare with the last disk point.")
    ] = False,
    threads: Annotated[int, typer.Option(min=1, help="Worker threads.")] = 2,
    json_out: JsonOpt = False,
) -> None:
    """Back up a disk (fixed-size blocks; only blocks changed since the last disk point are stored)."""

    def body() -> None:
        from kluis.engine.disk import DiskBackup, disks_of

        r = _open(repo, passphrase_file, scratch)
        previous = None
        if not full:
            # The newest disk point that holds a disk of this name is the one to compare with.
            for info in reversed([p for p in r.list_points() if p.kind == "disk"]):
                if any(d.name == name for d in disks_of(info.id, r.load_point(info.id)[1])):
                    previous = info.id
                    break
        with progress_bar("Backing up disk", enabled=not json_out) as update:
            result = DiskBackup(
                r, str(source), name=name, previous_point=previous, threads=threads, progress=update
            ).run()
        if json_out:
            print_json(result.as_dict() | {"previous_point": previous})
            return
        against = f" (compared with {previous[:12]})" if previous else ""
        out.print(
            f"Disk point [bold]{result.point_id}[/] {result.status}{against}: "
            f"{human_bytes(result.size)} disk, {human_bytes(result.bytes_read)} read, "
            f"{human_bytes(result.bytes_new)} new, {human_bytes(result.stored_bytes)} stored "
            f"in {result.seconds:.1f} s"
        )

    run_command(body, as_json=json_out)


@app.command("restore-disk")
def restore_disk(
    point: Annotated[str, typer.Argument(help="Disk recovery point id (a unique prefix, or 'latest').")],
    target: Annotated[Path, typer.Argument(help="Image file to write (sparse) or block device.")],
    repo: RepoOpt,
    passphrase_file: PassFileOpt = None,
    disk: Annotated[
        str | None, typer.Option("--disk", help="Which disk of the point (needed when it has several).")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="Worker threads.")] = 2,
    json_out: JsonOpt = False,
) -> None:
    """Write one disk of a disk recovery point to an image file or a block device."""

    def body() -> None:
        from kluis.engine.disk import DiskRestore, disks_of

        r = _open(repo, passphrase_file)
        point_id = r.resolve_point(point)
        disks = disks_of(point_id, r.load_point(point_id)[1])
        if not disks:
            raise KluisError(
                "ValidationFailed", reason=f"recovery point {point_id} holds files, not disks (use restore)"
            )
        chosen = disk
        if chosen is None:
            if len(disks) > 1:
                names = ", ".join(d.name for d in disks)
                raise KluisError("ValidationFailed", reason=f"the point has several disks; pick one: {names}")
            chosen = disks[0].name
        with progress_bar("Restoring disk", enabled=not json_out) as update:
            result = DiskRestore(r, point_id, chosen, target, threads=threads, progress=update).run()
        if json_out:
            print_json(result.as_dict())
            return
        out.print(
            f"Restored disk {result.disk} ({human_bytes(result.size)}) to {result.target} "
            f"in {result.seconds:.1f} s: {human_bytes(result.bytes_written)} written"
        )

    run_command(body, as_json=json_out)

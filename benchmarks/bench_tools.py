"""The three backup tools behind one small interface, each with its own repository and caches.

Every instance owns one run directory: ``repo/`` (what we measure with du),
``cache/`` (restic's cache, borg's base dir, Kluis's scratch) and ``restore/``.
The run directory is deleted after the run to keep the disk in check.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_measure import Measurement, disk_usage, measure, run

KLUIS = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "kluis"
REPO_ROOT = KLUIS.parent.parent.parent


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def freeze_kluis(src: Path, dest_root: Path) -> tuple[Path, str]:
    """Copy the Kluis package as it is now, so every run measures the same code.

    Other engineers change the engine while a long benchmark runs; the venv's editable
    install would pick up every edit. The copy goes first on PYTHONPATH of every Kluis
    command. Returns (folder for PYTHONPATH, description).
    """
    digest = _tree_digest(src / "kluis")
    dest = dest_root / f"kluis-{digest}"
    about = dest / "DESCRIPTION.txt"
    if not (dest / "kluis").exists():
        tmp = dest_root / f"kluis-{digest}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src / "kluis", tmp / "kluis", ignore=shutil.ignore_patterns("__pycache__"))
        # Compile now, so the first measured command does not pay for it.
        compileall.compile_dir(tmp / "kluis", quiet=1)
        tmp.rename(dest)
    if not about.exists():
        commit = run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], check=False).strip()
        dirty = run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "src/kluis"], check=False
        ).strip()
        state = " plus uncommitted changes in src/kluis" if dirty else ""
        about.write_text(
            f"kluis from git {commit}{state}; frozen copy {digest} (sha256 of the package files)"
        )
    # Passing an earlier frozen copy as the source (--kluis-src) reuses it with its description.
    return dest, about.read_text().strip()


BORG_COMPRESSION = "zstd,3"
# The CPU has SHA-NI, where borg's own docs say HMAC-SHA256 ("repokey") beats BLAKE2b.
BORG_ENCRYPTION = "repokey"


@dataclass
class Backup:
    """One backup: its cost, the snapshot it made, and what the tool itself reported."""

    m: Measurement
    snapshot: str
    report: dict[str, Any]


class Tool(ABC):
    """One tool in one run directory."""

    name: str
    compression: str

    def __init__(self, run_dir: Path, passphrase: str) -> None:
        self.run_dir = run_dir
        self.repo = run_dir / "repo"
        self.cache = run_dir / "cache"
        self.passphrase = passphrase

    def reset(self) -> None:
        """Start from an empty run directory."""
        self.remove()
        self.cache.mkdir(parents=True)

    def remove(self) -> None:
        """Delete repository, caches and restores of this run."""
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)

    def repo_bytes(self) -> int:
        """Bytes the repository takes on disk."""
        return disk_usage(self.repo)

    def cache_bytes(self) -> int:
        """Bytes of the tool's local cache / scratch (not part of the repository)."""
        return disk_usage(self.cache)

    @abstractmethod
    def env(self) -> dict[str, str]:
        """Environment for this tool's commands."""

    @abstractmethod
    def init(self) -> Measurement:
        """Create the repository."""

    @abstractmethod
    def backup(self, paths: Sequence[Path], name: str) -> Backup:
        """Back ``paths`` up into a new snapshot called (or tagged) ``name``."""

    @abstractmethod
    def restore(self, snapshot: str, target: Path) -> Measurement:
        """Restore a whole snapshot under ``target``."""

    @abstractmethod
    def verify(self) -> Measurement:
        """Check the repository, reading and authenticating all data."""

    @staticmethod
    @abstractmethod
    def version() -> str:
        """The tool's version line."""

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Benchmarks use real KDF parameters.
        env.pop("KLUIS_FAST_KDF", None)
        return env


class Kluis(Tool):
    """Kluis through ``kluis repo`` on a local directory."""

    name = "kluis"
    # Set by freeze_kluis() through run.py: the frozen package folder and its description.
    source: Path | None = None
    described = ""
    compression = "zstd (engine default level, see meta; chunks that do not compress are stored raw)"

    def __init__(self, run_dir: Path, passphrase: str) -> None:
        super().__init__(run_dir, passphrase)
        self.passfile = run_dir / "passphrase"
        self.scratch: Path | None = None

    def env(self) -> dict[str, str]:
        env = self._base_env()
        # restore/verify have no --scratch: their index cache goes to $XDG_CACHE_HOME/kluis/<id>.
        env["XDG_CACHE_HOME"] = str(self.cache)
        if Kluis.source is not None:
            env["PYTHONPATH"] = str(Kluis.source)
        return env

    def _common(self) -> list[str]:
        return ["--repo", str(self.repo), "--passphrase-file", str(self.passfile)]

    def init(self) -> Measurement:
        self.passfile.write_text(self.passphrase + "\n")
        m = measure([str(KLUIS), "repo", "init", *self._common(), "--json"], env=self.env(), gate=False)
        repo_id = json.loads(m.stdout)["repository"]
        # The same folder restore and verify use by default, so all commands share one index cache.
        self.scratch = self.cache / "kluis" / repo_id
        return m

    def backup(self, paths: Sequence[Path], name: str) -> Backup:
        assert self.scratch is not None, "init first"
        argv = [str(KLUIS), "repo", "backup", *map(str, paths), *self._common()]
        m = measure([*argv, "--scratch", str(self.scratch), "--json"], env=self.env())
        report = json.loads(m.stdout)
        return Backup(m, report["point_id"], report)

    # >>> DISK-ENGINE HOOK ------------------------------------------------------------------------
    # Kluis's disk-image engine (src/kluis/engine/disk_backup.py) is reached through
    # `kluis repo backup-disk` once that command exists. Until then the image is backed up as one
    # plain file through the file-tree engine, and RESULTS.md says so. To force one path or the
    # other, set KLUIS_BENCH_DISK_MODE=disk|file. If `backup-disk` grows different options,
    # adjust DISK_ARGV below; the JSON it prints must carry the recovery point id as "point_id".
    DISK_ARGV = ("repo", "backup-disk")

    @classmethod
    def disk_engine_available(cls) -> bool:
        """Whether this Kluis has the disk-image backup command."""
        forced = os.environ.get("KLUIS_BENCH_DISK_MODE")
        if forced in ("disk", "file"):
            return forced == "disk"
        env = dict(os.environ)
        if Kluis.source is not None:
            env["PYTHONPATH"] = str(Kluis.source)
        argv = [str(KLUIS), *cls.DISK_ARGV, "--help"]
        done = subprocess.run(argv, capture_output=True, check=False, env=env)
        return done.returncode == 0

    def backup_disk(self, image: Path, name: str) -> Backup:
        """Back a disk image up: through the disk engine when available, else as a plain file."""
        if not self.disk_engine_available():
            return self.backup([image], name)
        assert self.scratch is not None, "init first"
        argv = [str(KLUIS), *self.DISK_ARGV, str(image), *self._common()]
        m = measure([*argv, "--scratch", str(self.scratch), "--json"], env=self.env())
        report = json.loads(m.stdout)
        return Backup(m, str(report.get("point_id", "")), report)

    # While `backup-disk` is missing but the engine exists, run.py adds the supplementary tool
    # KluisDiskApi below (the engine through its Python API) to the disk-image phase.
    # <<< DISK-ENGINE HOOK ------------------------------------------------------------------------

    def restore(self, snapshot: str, target: Path) -> Measurement:
        target.mkdir(parents=True, exist_ok=True)
        argv = [str(KLUIS), "repo", "restore", snapshot, *self._common(), "--target", str(target), "--json"]
        return measure(argv, env=self.env())

    def verify(self) -> Measurement:
        m = measure([str(KLUIS), "repo", "verify", "--read-data", *self._common(), "--json"], env=self.env())
        if not json.loads(m.stdout).get("ok"):
            raise RuntimeError(f"kluis verify reported problems: {m.stdout[-2000:]}")
        return m

    @staticmethod
    def version() -> str:
        if Kluis.described:
            return Kluis.described
        commit = run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], check=False)
        dirty = run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "src/kluis"], check=False)
        state = " plus uncommitted changes in src/kluis" if dirty.strip() else ""
        return f"kluis from git {commit.strip()}{state} (live tree, not frozen)"


class KluisDiskApi(Kluis):
    """Kluis's disk-image engine driven through its Python API (``kluis_disk_driver.py``).

    Supplementary, disk-image phase only, for as long as ``kluis repo backup-disk`` does not
    exist: the CLI has no way to reach the engine yet, the library does.
    """

    name = "kluis-disk-api"
    DRIVER = Path(__file__).resolve().parent / "kluis_disk_driver.py"

    @staticmethod
    def api_available() -> bool:
        """Whether the measured Kluis has the disk-image engine module."""
        base = Kluis.source if Kluis.source is not None else REPO_ROOT / "src"
        return (base / "kluis" / "engine" / "disk_backup.py").exists()

    def backup_disk(self, image: Path, name: str) -> Backup:
        """Back the image up through the disk engine (previous disk point passed on)."""
        assert self.scratch is not None, "init first"
        argv = [str(KLUIS.parent / "python"), str(self.DRIVER), str(image), *self._common()]
        m = measure([*argv, "--scratch", str(self.scratch)], env=self.env())
        report = json.loads(m.stdout)
        return Backup(m, str(report.get("point_id", "")), report)


class Restic(Tool):
    """restic with a local repository (format version 2, so compression is on)."""

    name = "restic"
    compression = "auto (restic's default: zstd, fastest level)"

    def env(self) -> dict[str, str]:
        env = self._base_env()
        env.update(
            RESTIC_PASSWORD=self.passphrase,
            RESTIC_REPOSITORY=str(self.repo),
            RESTIC_CACHE_DIR=str(self.cache),
        )
        return env

    def init(self) -> Measurement:
        return measure(["restic", "init", "--repository-version", "2"], env=self.env(), gate=False)

    def backup(self, paths: Sequence[Path], name: str) -> Backup:
        m = measure(
            ["restic", "backup", "--json", "--host", "bench", "--tag", name, *map(str, paths)], env=self.env()
        )
        summary: dict[str, Any] = {}
        for line in m.stdout.splitlines():
            if '"summary"' in line:
                summary = json.loads(line)
        return Backup(m, str(summary["snapshot_id"]), summary)

    def restore(self, snapshot: str, target: Path) -> Measurement:
        return measure(["restic", "restore", snapshot, "--target", str(target)], env=self.env())

    def verify(self) -> Measurement:
        return measure(["restic", "check", "--read-data"], env=self.env())

    @staticmethod
    def version() -> str:
        return run(["restic", "version"]).strip()


class Borg(Tool):
    """borg 1.x with a local repository."""

    name = "borg"
    compression = BORG_COMPRESSION
    encryption = BORG_ENCRYPTION

    def env(self) -> dict[str, str]:
        env = self._base_env()
        env.update(
            BORG_PASSPHRASE=self.passphrase,
            BORG_BASE_DIR=str(self.cache),
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        )
        return env

    def init(self) -> Measurement:
        argv = ["borg", "init", "--encryption", BORG_ENCRYPTION, str(self.repo)]
        return measure(argv, env=self.env(), gate=False)

    def backup(self, paths: Sequence[Path], name: str) -> Backup:
        argv = ["borg", "create", "--json", "--compression", BORG_COMPRESSION, f"{self.repo}::{name}"]
        m = measure([*argv, *map(str, paths)], env=self.env())
        report = json.loads(m.stdout)
        return Backup(m, name, report.get("archive", {}).get("stats", {}))

    def restore(self, snapshot: str, target: Path) -> Measurement:
        target.mkdir(parents=True, exist_ok=True)
        return measure(["borg", "extract", f"{self.repo}::{snapshot}"], env=self.env(), cwd=target)

    def verify(self) -> Measurement:
        return measure(["borg", "check", "--verify-data", str(self.repo)], env=self.env())

    @staticmethod
    def version() -> str:
        return run(["borg", "--version"]).strip()


TOOLS: dict[str, type[Tool]] = {"kluis": Kluis, "restic": Restic, "borg": Borg}
# Tools that only take part in the disk-image phase.
DISK_ONLY: dict[str, type[Tool]] = {"kluis-disk-api": KluisDiskApi}

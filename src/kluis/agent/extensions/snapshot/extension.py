"""The snapshot extension as a package: build, serve, install, verify, load, uninstall.

A package is a gzip tarball ``kluis-extension-<name>-<version>.tar.gz`` holding the
extension's files and ``manifest.json`` (name, version, and the SHA-256 of each file).
The vault serves it with the tarball's own SHA-256; the agent installs it into
``<extensions dir>/<name>/<version>/`` on the first disk backup and records a handler
state per extension in a JSON state file::

    {"snapshot": {"name": "snapshot", "version": "0.1.0+3f2a...", "state": "succeeded",
                  "updated": 1700000000.0, "code": null, "message": null}}

States: ``transitioning`` while installing, ``succeeded`` once verified and loaded,
``failed`` with the catalog code and message. ``heartbeat_entries()`` is what the agent
reports in heartbeats. Uninstalling removes the files and the state, so the next
backup installs the current version again.

Coded failures, checked in this order: extensions switched off in the agent
configuration (``extensions.enable = false``: AgentConfigOptionInvalid naming the
option), an extension directory that cannot run programs (noexec mount:
ExtensionDirNoexec; denied by a security policy: ExtensionBlockedBySecurityPolicy),
no network to download (ExtensionSnapshotFailedNoNetwork), and a package that fails
its checksum or does not load (ExtensionOperationFailedForManagedDisks).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from kluis.catalog import KluisError

EXTENSION_NAME = "snapshot"
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
STATES = ("transitioning", "succeeded", "failed")
STATE_FILE = "handlers.json"
# The import name an installed extension is loaded under (never the agent's own copy).
MODULE_PREFIX = "kluis_ext_"
_LOAD_CHECK = (
    "import importlib.util, sys\n"
    "path, name = sys.argv[1], sys.argv[2]\n"
    "spec = importlib.util.spec_from_file_location(name, path + '/__init__.py',"
    " submodule_search_locations=[path])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "assert isinstance(mod.EXTENSION_API, int)\n"
    "print(mod.EXTENSION_API)\n"
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_files(root: Path = PACKAGE_DIR) -> dict[str, bytes]:
    """The extension's source files by relative path (no caches, no bytecode)."""
    out: dict[str, bytes] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts:
            continue
        out[rel.as_posix()] = path.read_bytes()
    return out


def extension_version(files: dict[str, bytes] | None = None) -> str:
    """``<kluis version>+<12 hex digits of the files' hash>``: a new version whenever a file changes."""
    from kluis import __version__

    files = package_files() if files is None else files
    h = hashlib.sha256()
    for rel, data in sorted(files.items()):
        h.update(rel.encode() + b"\0" + _sha256(data).encode() + b"\n")
    return f"{__version__}+{h.hexdigest()[:12]}"


def build_snapshot_extension_package(out_dir: str | os.PathLike[str]) -> tuple[Path, str, str]:
    """Pack this extension's files into a versioned tarball: ``(path, sha256, version)``.

    The tarball is byte-for-byte reproducible (sorted entries, zero times and owners),
    so the same files always give the same checksum.
    """
    files = package_files()
    version = extension_version(files)
    manifest = {
        "name": EXTENSION_NAME,
        "version": version,
        "files": {rel: _sha256(data) for rel, data in files.items()},
    }
    entries = {MANIFEST: json.dumps(manifest, indent=1, sort_keys=True).encode(), **files}
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for rel, data in entries.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    blob = raw.getvalue()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"kluis-extension-{EXTENSION_NAME}-{version}.tar.gz"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    return path, _sha256(blob), version


def http_fetcher(url: str, timeout: float = 30.0, **client_args: Any) -> Callable[[], bytes]:
    """A download function for ``install``: GET ``url`` with httpx (proxy, TLS as given)."""

    def fetch() -> bytes:
        import httpx

        with httpx.Client(timeout=timeout, **client_args) as client:
            response = client.get(url)
            response.raise_for_status()
            return response.content

    return fetch


@dataclass
class HandlerState:
    """An extension's state as the vault sees it."""

    name: str
    version: str
    state: str
    updated: float
    code: str | None = None
    message: str | None = None


class ExtensionManager:
    """Installed extensions under one directory, with their handler states."""

    def __init__(
        self,
        ext_dir: str | os.PathLike[str],
        *,
        machine: str = "this machine",
        enabled: bool = True,
        config_path: str = "/etc/kluis/agent.toml",
        state_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.dir = Path(ext_dir)
        self.machine = machine
        self.enabled = enabled
        self.config_path = config_path
        self.state_file = Path(state_file) if state_file else self.dir / STATE_FILE

    # -- handler states -------------------------------------------------------------------

    def _read_states(self) -> dict[str, HandlerState]:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return {name: HandlerState(**s) for name, s in data.items()}

    def _set_state(
        self, name: str, version: str, state: str, error: KluisError | None = None
    ) -> HandlerState:
        assert state in STATES
        states = self._read_states()
        hs = HandlerState(
            name, version, state, time.time(), error.code if error else None, error.message if error else None
        )
        states[name] = hs
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({n: asdict(s) for n, s in states.items()}, indent=1))
        os.replace(tmp, self.state_file)
        return hs

    def states(self) -> list[HandlerState]:
        """Every extension's handler state (``kluis extension list``)."""
        return sorted(self._read_states().values(), key=lambda s: s.name)

    def state(self, name: str) -> HandlerState | None:
        """One extension's handler state."""
        return self._read_states().get(name)

    def heartbeat_entries(self) -> list[dict[str, Any]]:
        """Handler states in the shape the agent's heartbeat carries."""
        return [asdict(s) for s in self.states()]

    def installed_path(self, name: str) -> Path | None:
        """Directory of the installed version, when one succeeded."""
        hs = self.state(name)
        if hs is None or hs.state != "succeeded":
            return None
        path = self.dir / name / hs.version
        return path if path.is_dir() else None

    # -- checks ---------------------------------------------------------------------------

    def check_enabled(self) -> None:
        """Extensions switched off in the agent configuration: AgentConfigOptionInvalid."""
        if not self.enabled:
            raise KluisError(
                "AgentConfigOptionInvalid",
                option="extensions.enable",
                config=self.config_path,
                value="false",
                expected="true",
            )

    def check_executable(self) -> None:
        """The extension directory must allow running programs: statvfs, then a real probe."""
        self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        if os.statvfs(self.dir).f_flag & os.ST_NOEXEC:
            raise KluisError("ExtensionDirNoexec", path=str(self.dir))
        probe = self.dir / f".exec-probe-{os.getpid()}"
        try:
            try:
                probe.write_text("#!/bin/sh\nexit 0\n")
                probe.chmod(0o700)
            except OSError as exc:
                reason = f"{self.dir} does not take a file: {exc.strerror or exc}"
                raise KluisError(
                    "ExtensionInstallFailed",
                    extension="snapshot extensions",
                    machine=self.machine,
                    reason=reason,
                ) from exc
            try:
                proc = subprocess.run([str(probe)], capture_output=True, timeout=10, check=False)
            except PermissionError as exc:
                raise KluisError(
                    "ExtensionBlockedBySecurityPolicy", path=str(probe), reason=exc.strerror or str(exc)
                ) from exc
            if proc.returncode != 0:
                raise KluisError(
                    "ExtensionBlockedBySecurityPolicy",
                    path=str(probe),
                    reason=f"a probe program exited with {proc.returncode}",
                )
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    # -- install ----------------------------------------------------------------------------

    def _fail(self, name: str, version: str, err: KluisError) -> KluisError:
        self._set_state(name, version, "failed", err)
        return err

    def _op_failed(self, name: str, version: str, reason: str) -> KluisError:
        return self._fail(
            name,
            version,
            KluisError(
                "ExtensionOperationFailedForManagedDisks", extension=name, machine=self.machine, reason=reason
            ),
        )

    def install(
        self, name: str, version: str, sha256: str, fetch: Callable[[], bytes], *, url: str = "the vault"
    ) -> HandlerState:
        """Download, verify, unpack and load one extension version; its handler state."""
        self.check_enabled()
        self.check_executable()
        self._set_state(name, version, "transitioning")
        try:
            blob = fetch()
        except KluisError as exc:
            if exc.entry.area == "connectivity" or exc.entry.exit_code == 7:
                raise self._fail(
                    name,
                    version,
                    KluisError(
                        "ExtensionSnapshotFailedNoNetwork", machine=self.machine, url=url, reason=exc.message
                    ),
                ) from exc
            raise self._fail(name, version, exc) from exc
        except Exception as exc:
            if _is_network_error(exc):
                raise self._fail(
                    name,
                    version,
                    KluisError(
                        "ExtensionSnapshotFailedNoNetwork", machine=self.machine, url=url, reason=str(exc)
                    ),
                ) from exc
            raise self._op_failed(name, version, f"downloading the package failed: {exc}") from exc
        actual = _sha256(blob)
        if actual != sha256.lower():
            raise self._op_failed(name, version, f"the package checksum is {actual}, expected {sha256}")
        target = self.dir / name / version
        staging = self.dir / name / f".{version}.installing"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            self._unpack(blob, staging, name, version)
        except (ValueError, tarfile.TarError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise self._op_failed(name, version, f"the package is not valid: {exc}") from exc
        except OSError as exc:
            # The package was fine (its checksum matched); the directory could not take it.
            shutil.rmtree(staging, ignore_errors=True)
            why = f"writing it under {self.dir} failed: {exc.strerror or exc}"
            raise self._fail(
                name,
                version,
                KluisError("ExtensionInstallFailed", extension=name, machine=self.machine, reason=why),
            ) from exc
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        reason = self._load_check(name, target)
        if reason:
            raise self._op_failed(name, version, f"it does not load: {reason}")
        for old in (self.dir / name).iterdir():
            if old.name != version:
                shutil.rmtree(old, ignore_errors=True)
        return self._set_state(name, version, "succeeded")

    def ensure(
        self, name: str, version: str, sha256: str, fetch: Callable[[], bytes], *, url: str = "the vault"
    ) -> HandlerState:
        """Install unless this version is installed, intact and loaded (each disk backup calls this)."""
        hs = self.state(name)
        if hs is not None and hs.state == "succeeded" and hs.version == version and self.verify(name) is None:
            self.check_enabled()
            return hs
        return self.install(name, version, sha256, fetch, url=url)

    def _unpack(self, blob: bytes, dest: Path, name: str, version: str) -> None:
        dest.mkdir(parents=True, mode=0o755)
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if not m.isfile() or m.name.startswith("/") or ".." in parts:
                    raise ValueError(f"unsafe entry {m.name!r}")
            tar.extractall(dest, filter="data")
        manifest = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("name") != name or manifest.get("version") != version:
            raise ValueError(
                f"the manifest names {manifest.get('name')} {manifest.get('version')}, not {name} {version}"
            )
        bad = _check_files(dest, manifest)
        if bad:
            raise ValueError(bad)

    def _load_check(self, name: str, path: Path) -> str | None:
        proc = subprocess.run(
            [sys.executable, "-B", "-c", _LOAD_CHECK, str(path), MODULE_PREFIX + name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            return lines[-1] if lines else f"exit code {proc.returncode}"
        return None

    # -- use and removal ------------------------------------------------------------------

    def verify(self, name: str) -> str | None:
        """Re-hash the installed files against the manifest: None when intact, else what is wrong."""
        path = self.installed_path(name)
        if path is None:
            return "not installed"
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"manifest unreadable: {exc}"
        return _check_files(path, manifest)

    def load(self, name: str) -> ModuleType:
        """Import the installed, verified extension (under ``kluis_ext_<name>``)."""
        hs = self.state(name)
        problem = self.verify(name)
        if problem is not None or hs is None:
            raise self._op_failed(name, hs.version if hs else "?", problem or "not installed")
        path = self.dir / name / hs.version
        mod_name = MODULE_PREFIX + name
        spec = importlib.util.spec_from_file_location(
            mod_name, path / "__init__.py", submodule_search_locations=[str(path)]
        )
        if spec is None or spec.loader is None:
            raise self._op_failed(name, hs.version, "no importable package")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise self._op_failed(name, hs.version, f"it does not load: {exc}") from exc
        return module

    def uninstall(self, name: str) -> bool:
        """Remove an extension and its state (``kluis extension uninstall``); False if absent."""
        states = self._read_states()
        existed = name in states or (self.dir / name).exists()
        shutil.rmtree(self.dir / name, ignore_errors=True)
        if name in states:
            del states[name]
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({n: asdict(s) for n, s in states.items()}, indent=1))
            os.replace(tmp, self.state_file)
        return existed


def _check_files(root: Path, manifest: dict[str, Any]) -> str | None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "the manifest lists no files"
    for rel, digest in files.items():
        try:
            data = (root / rel).read_bytes()
        except OSError:
            return f"{rel} is missing"
        if _sha256(data) != digest:
            return f"{rel} does not match its checksum"
    return None


def _is_network_error(exc: BaseException) -> bool:
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx is a dependency
        httpx = None  # type: ignore[assignment]
    if httpx is not None and isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, ConnectionError | TimeoutError | OSError)

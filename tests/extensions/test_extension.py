"""The extension package: build, serve over HTTP on 127.0.0.1, install, verify, load, fail."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kluis.agent.extensions.snapshot import (
    EXTENSION_NAME,
    ExtensionManager,
    build_snapshot_extension_package,
    http_fetcher,
)
from kluis.catalog import KluisError
from tests.extensions.conftest import Guest
from tests.extensions.helpers import Mounts, write_finishes


class PackageServer:
    """A tiny HTTP server on 127.0.0.1 serving packages by path, counting downloads."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = server.files.get(self.path)
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[PackageServer]:
    s = PackageServer()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def package(tmp_path: Path) -> tuple[Path, str, str]:
    return build_snapshot_extension_package(tmp_path / "dist")


def _serve(server: PackageServer, path: Path) -> str:
    server.files["/" + path.name] = path.read_bytes()
    return server.url("/" + path.name)


def test_package_is_versioned_and_reproducible(tmp_path: Path, package: tuple[Path, str, str]) -> None:
    path, sha, version = package
    again = build_snapshot_extension_package(tmp_path / "dist2")
    assert again[1:] == (sha, version)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert version in path.name and "+" in version
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert {"manifest.json", "__init__.py", "watchdog.py", "quiesce.py", "providers/reflink.py"} <= names
    assert manifest["name"] == EXTENSION_NAME and manifest["version"] == version
    assert set(manifest["files"]) == names - {"manifest.json"}


def test_install_verify_load_and_run_the_installed_copy(
    tmp_path: Path, server: PackageServer, package: tuple[Path, str, str], guest: Guest
) -> None:
    path, sha, version = package
    url = _serve(server, path)
    ext = ExtensionManager(tmp_path / "ext", machine="web-01")
    state = ext.ensure(EXTENSION_NAME, version, sha, http_fetcher(url), url=url)
    assert (state.state, state.version, state.code) == ("succeeded", version, None)
    assert ext.heartbeat_entries()[0]["state"] == "succeeded"
    assert json.loads((tmp_path / "ext" / "handlers.json").read_text())["snapshot"]["version"] == version

    # Installed and intact: the next backup does not download again.
    ext.ensure(EXTENSION_NAME, version, sha, http_fetcher(url), url=url)
    assert server.hits["/" + path.name] == 1

    module = ext.load(EXTENSION_NAME)
    assert module.__name__ == "kluis_ext_snapshot" and module.EXTENSION_API == 1
    installed = tmp_path / "ext" / EXTENSION_NAME / version
    assert module.freeze.WATCHDOG_SCRIPT.startswith(str(installed))
    # The installed copy freezes and thaws for real, with its own watchdog.
    with module.FreezeGuard([str(guest.mountpoint)], 10) as guard:
        assert guard.frozen and write_finishes(guest.mountpoint / "x", within=0.3) is None
    assert write_finishes(guest.mountpoint / "y", within=5) is not None

    # A changed file fails verification; the next backup reinstalls.
    (installed / "quiesce.py").write_text("# tampered\n")
    assert ext.verify(EXTENSION_NAME) == "quiesce.py does not match its checksum"
    ext.ensure(EXTENSION_NAME, version, sha, http_fetcher(url), url=url)
    assert server.hits["/" + path.name] == 2 and ext.verify(EXTENSION_NAME) is None

    # Uninstalled: gone, and reinstalled by the next backup.
    assert ext.uninstall(EXTENSION_NAME)
    assert ext.states() == [] and not (tmp_path / "ext" / EXTENSION_NAME).exists()
    assert ext.ensure(EXTENSION_NAME, version, sha, http_fetcher(url), url=url).state == "succeeded"


def test_checksum_mismatch_and_load_failure_are_coded(
    tmp_path: Path, server: PackageServer, package: tuple[Path, str, str]
) -> None:
    path, _sha, version = package
    url = _serve(server, path)
    ext = ExtensionManager(tmp_path / "ext", machine="web-01")
    with pytest.raises(KluisError) as exc:
        ext.install(EXTENSION_NAME, version, "0" * 64, http_fetcher(url), url=url)
    assert exc.value.code == "ExtensionOperationFailedForManagedDisks"
    assert "checksum" in exc.value.message
    state = ext.state(EXTENSION_NAME)
    assert state is not None and state.state == "failed"
    assert state.code == "ExtensionOperationFailedForManagedDisks"

    # A package that verifies but does not load.
    broken_init = b"raise ImportError('needs a newer agent')\n"
    digest = hashlib.sha256(broken_init).hexdigest()
    manifest = {"name": "broken", "version": "1.0", "files": {"__init__.py": digest}}
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in (("manifest.json", json.dumps(manifest).encode()), ("__init__.py", broken_init)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = raw.getvalue()
    with pytest.raises(KluisError) as exc:
        ext.install("broken", "1.0", hashlib.sha256(blob).hexdigest(), lambda: blob)
    assert exc.value.code == "ExtensionOperationFailedForManagedDisks"
    assert "does not load" in exc.value.message and "needs a newer agent" in exc.value.message
    assert ext.state("broken") is not None and ext.state("broken").state == "failed"  # type: ignore[union-attr]


def test_no_network_disabled_and_noexec(
    tmp_path: Path, mounts: Mounts, package: tuple[Path, str, str]
) -> None:
    path, sha, version = package
    with socket.socket() as s:  # a port on loopback where nothing listens
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/{path.name}"
    ext = ExtensionManager(tmp_path / "ext", machine="web-01")
    with pytest.raises(KluisError) as exc:
        ext.install(EXTENSION_NAME, version, sha, http_fetcher(closed, timeout=2), url=closed)
    assert exc.value.code == "ExtensionSnapshotFailedNoNetwork"
    assert closed in exc.value.message
    assert ext.state(EXTENSION_NAME).code == "ExtensionSnapshotFailedNoNetwork"  # type: ignore[union-attr]

    off = ExtensionManager(tmp_path / "ext2", enabled=False, config_path="/etc/kluis/agent.toml")
    with pytest.raises(KluisError) as exc:
        off.install(EXTENSION_NAME, version, sha, lambda: path.read_bytes())
    assert exc.value.code == "AgentConfigOptionInvalid"
    assert "extensions.enable" in exc.value.message and "/etc/kluis/agent.toml" in exc.value.message

    noexec = mounts.mount("tmpfs", tmp_path / "noexec", "noexec", "size=16m", fstype="tmpfs")
    blocked = ExtensionManager(noexec / "extensions")
    with pytest.raises(KluisError) as exc:
        blocked.install(EXTENSION_NAME, version, sha, lambda: path.read_bytes())
    assert exc.value.code == "ExtensionDirNoexec"
    assert str(noexec / "extensions") in exc.value.message


def test_extension_directory_too_full_to_install(
    tmp_path: Path, mounts: Mounts, package: tuple[Path, str, str]
) -> None:
    path, sha, version = package
    small = mounts.mount("tmpfs", tmp_path / "small", "size=1m", fstype="tmpfs")
    ext_dir = small / "extensions"
    ext_dir.mkdir()
    # Fill the file system, then give back a little: room for the exec probe, not for the package.
    filler = small / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\1" * 4096):
            pass
    except OSError as full:
        assert full.errno == errno.ENOSPC
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - 16 * 1024))
    assert len(path.read_bytes()) > 16 * 1024, "the package should not fit in what is left"
    ext = ExtensionManager(ext_dir, machine="web-01")
    with pytest.raises(KluisError) as exc:
        ext.install(EXTENSION_NAME, version, sha, lambda: path.read_bytes())
    assert exc.value.code == "ExtensionInstallFailed", exc.value.message
    assert exc.value.params["machine"] == "web-01" and "No space left" in exc.value.params["reason"]
    assert ext.state(EXTENSION_NAME).code == "ExtensionInstallFailed"  # type: ignore[union-attr]
    assert not list((ext_dir / EXTENSION_NAME).glob(".*.installing"))

    filler.unlink()  # with room again, the same package installs
    assert ext.install(EXTENSION_NAME, version, sha, lambda: path.read_bytes()).state == "succeeded"

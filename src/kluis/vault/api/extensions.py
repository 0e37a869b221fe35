"""Extension packages the vault serves to agents (the snapshot extension for disk backups).

The package is built once per vault process from the extension's own files
(``build_snapshot_extension_package``, reproducible: same files, same bytes) and
served with its version and SHA-256, which the agent checks before installing.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from kluis.catalog import KluisError
from kluis.vault.api.deps import get_principal
from kluis.vault.auth import Principal

router = APIRouter(prefix="/extensions", tags=["extensions"])

_lock = threading.Lock()
_built: dict[str, tuple[Path, str, str]] = {}
_tmp: tempfile.TemporaryDirectory[str] | None = None


def package(name: str) -> tuple[Path, str, str]:
    """Path, SHA-256 and version of extension ``name``'s package (built on first use)."""
    global _tmp
    from kluis.agent.extensions.snapshot import EXTENSION_NAME, build_snapshot_extension_package

    if name != EXTENSION_NAME:
        raise KluisError("ResourceNotFound", kind="extension", name=name)
    with _lock:
        if name not in _built:
            if _tmp is None:
                _tmp = tempfile.TemporaryDirectory(prefix="kluis-extensions-")
            _built[name] = build_snapshot_extension_package(_tmp.name)
        return _built[name]


@router.get("/{name}", summary="The current version and checksum of an extension package")
def describe(name: str, _p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """Name, version, SHA-256 and the download path of the package."""
    path, sha256, version = package(name)
    return {
        "name": name,
        "version": version,
        "sha256": sha256,
        "size": path.stat().st_size,
        "url": f"/extensions/{name}/package",
    }


@router.get("/{name}/package", summary="Download an extension package (tar.gz)")
def download(name: str, _p: Principal = Depends(get_principal)) -> Response:
    """The package's bytes; its SHA-256 is also in the ``X-Kluis-SHA256`` header."""
    path, sha256, version = package(name)
    return Response(
        content=path.read_bytes(),
        media_type="application/gzip",
        headers={"X-Kluis-SHA256": sha256, "X-Kluis-Version": version},
    )

"""Shared helpers for engine tests: repositories on a local store, tree comparison."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kluis.engine.repository import Repository
from kluis.stores import LocalStore

PASSPHRASE = "a passphrase of decent length"


def new_repo(path: Path) -> Repository:
    """A fresh repository in ``path``."""
    repo, _wrapped, _kek = Repository.init(LocalStore(path), PASSPHRASE)
    return repo


def reopen(repo: Repository) -> Repository:
    """The same repository opened again from its store (nothing cached in memory)."""
    return Repository.open(repo.store, passphrase=PASSPHRASE)


def folders_of_random_files(root: Path, folders: int, files: int, size: int) -> None:
    """Folders ``root/d0``, ``d1``... each with ``files`` files ``f0``, ``f1``... of ``size`` random bytes."""
    for d in range(folders):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(files):
            (root / f"d{d}" / f"f{f}").write_bytes(os.urandom(size))


def snapshot_tree(root: Path, *, times: bool = True) -> dict[str, tuple[object, ...]]:
    """Everything a restore must reproduce: type, mode, owner, size, content, link target, xattrs."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = p.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            try:
                xattrs = tuple(
                    sorted(
                        (k, os.getxattr(p, k, follow_symlinks=False))
                        for k in os.listxattr(p, follow_symlinks=False)
                    )
                )
            except OSError:
                xattrs = ()
            mtime = st.st_mtime_ns if times and not stat.S_ISDIR(st.st_mode) else None
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size,
                content,
                xattrs,
                mtime,
            )
    return out

"""Unlocking repositories on the machine: its own (KEK file) and other machines' (restore elsewhere).

The machine's own repository opens with the KEK file in the scratch folder; a missing,
unreadable or non-matching KEK file is ID 34506. To restore another machine's data
here, that machine's passphrase is given once with ``kluis agent source-passphrase``;
the first restore derives the KEK from it against the source's stored key set, keeps
the KEK (mode 0600) and deletes the passphrase file.
"""

from __future__ import annotations

import os
from pathlib import Path

from kluis.agent.config import AgentConfig
from kluis.agent.scratch import Layout
from kluis.catalog import KluisError
from kluis.engine.keys import read_kek_file, write_kek_file
from kluis.engine.repository import Repository
from kluis.stores import Store


def own_kek(cfg: AgentConfig) -> bytes:
    """The machine's KEK; 34506 when the file is missing, unreadable or of another key set."""
    path = Layout(cfg.scratch).kek
    kek, fingerprint = read_kek_file(path)
    if cfg.key_fingerprint and fingerprint != cfg.key_fingerprint:
        raise KluisError(
            "34506",
            path=str(path),
            detail=f"the file belongs to key set {fingerprint}, but the machine registered"
            f" key set {cfg.key_fingerprint}",
        )
    return kek


def open_own(cfg: AgentConfig, store: Store, cache_dir: Path) -> Repository:
    """The machine's repository, unlocked with the KEK file."""
    kek = own_kek(cfg)
    try:
        return Repository.open(store, kek=kek, cache_dir=cache_dir)
    except KluisError as exc:
        if exc.code == "RepoPassphraseIncorrect":
            raise KluisError(
                "34506",
                path=str(Layout(cfg.scratch).kek),
                detail="it does not unlock the key set in the vault",
            ) from None
        raise


def save_source_passphrase(cfg: AgentConfig, source_machine_id: str, passphrase: str) -> Path:
    """Keep another machine's passphrase (mode 0600) until a restore turns it into a KEK file."""
    layout = Layout(cfg.scratch)
    path = layout.source_passphrase(source_machine_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(passphrase)
    os.replace(path.with_name(path.name + ".tmp"), path)
    # A new passphrase replaces a KEK kept from an earlier one.
    layout.source_kek(source_machine_id).unlink(missing_ok=True)
    return path


def open_source(cfg: AgentConfig, source_machine_id: str, store: Store, cache_dir: Path) -> Repository:
    """Another machine's repository, unlocked with its passphrase or the KEK kept from it."""
    layout = Layout(cfg.scratch)
    kek_path = layout.source_kek(source_machine_id)
    pass_path = layout.source_passphrase(source_machine_id)
    if kek_path.exists():
        kek, _fp = read_kek_file(kek_path)
        try:
            return Repository.open(store, kek=kek, cache_dir=cache_dir)
        except KluisError as exc:
            if exc.code != "RepoPassphraseIncorrect" or not pass_path.exists():
                if exc.code == "RepoPassphraseIncorrect":
                    raise KluisError("RestoreSourcePassphraseWrong", source=source_machine_id) from None
                raise
    if not pass_path.exists():
        raise KluisError("RestoreSourcePassphraseMissing", source=source_machine_id)
    passphrase = pass_path.read_text()
    config = Repository.read_config(store)
    for _name, wrapped in Repository.key_files(store):
        kek = wrapped.kek_for(passphrase)
        try:
            keys = wrapped.unwrap(kek, repo=f"machine {source_machine_id}")
        except KluisError as exc:
            if exc.code == "RepoPassphraseIncorrect":
                continue
            raise
        write_kek_file(kek_path, kek, keys.fingerprint())
        pass_path.unlink(missing_ok=True)
        repo = Repository(store, keys, config, cache_dir=cache_dir)
        repo.index.load(store, cache_dir / "index-cache")
        return repo
    raise KluisError("RestoreSourcePassphraseWrong", source=source_machine_id)

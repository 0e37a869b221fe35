"""How many workers a restore starts: one per core (at most 4), one more from a remote store."""

from __future__ import annotations

import os
from pathlib import Path

from kluis.agent.store import ResilientStore, UploadPipeline
from kluis.engine.backup import FileBackup
from kluis.engine.repository import Repository
from kluis.engine.restore import RestoreOptions, Restorer, restore_threads
from kluis.stores import LocalStore
from kluis.stores.azure import AzureBlobStore
from kluis.stores.s3 import S3Store
from kluis.stores.vault import VaultStore
from tests.engine.helpers import PASSPHRASE, new_repo, snapshot_tree

CORES = max(1, min(4, os.cpu_count() or 1))


class FarStore(LocalStore):
    """A local directory that says it is remote."""

    remote = True


def test_remote_stores_say_so_and_wrappers_pass_it_on(tmp_path: Path) -> None:
    assert not LocalStore(tmp_path).remote
    assert S3Store.remote and AzureBlobStore.remote and VaultStore.remote
    far = FarStore(tmp_path)
    assert ResilientStore(far).remote and UploadPipeline(ResilientStore(far)).remote
    pipeline = UploadPipeline(LocalStore(tmp_path))
    try:
        assert not pipeline.remote
    finally:
        pipeline.close()
    assert restore_threads(LocalStore(tmp_path)) == CORES
    assert restore_threads(far) == CORES + 1


def test_restore_from_a_remote_store_uses_one_more_worker(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(8):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(20):
            (src / f"d{d}" / f"f{f}").write_bytes(os.urandom(3000 + 997 * f))
    point = FileBackup(new_repo(tmp_path / "repo")).run([src]).point_id
    far = FarStore(tmp_path / "repo")
    restorer = Restorer(Repository.open(far, passphrase=PASSPHRASE), point, tmp_path / "out")
    assert restorer.threads == CORES + 1
    restorer.run()
    assert snapshot_tree(tmp_path / "out" / src.relative_to("/")) == snapshot_tree(src)
    # An explicit count still wins.
    fixed = Restorer(
        Repository.open(far, passphrase=PASSPHRASE),
        point,
        tmp_path / "out2",
        options=RestoreOptions(threads=1),
    )
    assert fixed.threads == 1

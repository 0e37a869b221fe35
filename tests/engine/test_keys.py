"""Master keys, wrapping, passphrase changes and the KEK file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kluis.catalog import KluisError
from kluis.engine.keys import MasterKeys, WrappedKeys, read_kek_file, rewrap, wrap, write_kek_file
from kluis.engine.repository import Repository
from kluis.stores import LocalStore
from tests.engine.helpers import PASSPHRASE, new_repo


def test_wrap_unwrap_and_wrong_passphrase() -> None:
    keys = MasterKeys.generate()
    wrapped, kek = wrap(keys, "correct horse battery staple")
    parsed = WrappedKeys.from_json("k", wrapped.to_json())
    assert parsed.unwrap(parsed.kek_for("correct horse battery staple")) == keys
    assert parsed.unwrap(kek) == keys
    with pytest.raises(KluisError) as info:
        parsed.unwrap(parsed.kek_for("wrong horse battery staple"))
    assert info.value.code == "RepoPassphraseIncorrect"
    assert info.value.actions  # a catalog entry, with actions, never a traceback


def test_key_file_holds_no_key_material() -> None:
    keys = MasterKeys.generate()
    wrapped, kek = wrap(keys, "p" * 20)
    text = wrapped.to_json()
    for secret in (keys.encryption_key, keys.id_key, kek):
        assert secret.hex().encode() not in text and secret not in text


def test_rewrap_keeps_keys_and_data(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    blob = repo.save_blob(0, b"data that must survive a passphrase change")  # type: ignore[arg-type]
    repo.save_point("files", {"root": None}, {blob})
    name, wrapped, _ = repo.add_key("a brand new passphrase!")
    old = [n for n, _ in Repository.key_files(repo.store) if n != name]
    for n in old:
        repo.store.delete(n)
    reopened = Repository.open(repo.store, passphrase="a brand new passphrase!")
    assert reopened.load_blob(blob) == b"data that must survive a passphrase change"
    with pytest.raises(KluisError):
        Repository.open(repo.store, passphrase=PASSPHRASE)
    again, _kek = rewrap(wrapped, "a brand new passphrase!", "third passphrase here")
    assert again.unwrap(again.kek_for("third passphrase here")).fingerprint() == repo.keys.fingerprint()


def test_kek_file_roundtrip_and_failures(tmp_path: Path) -> None:
    keys = MasterKeys.generate()
    _wrapped, kek = wrap(keys, "p" * 20)
    path = tmp_path / "scratch" / "kluis.kek"
    write_kek_file(path, kek, keys.fingerprint())
    assert (os.stat(path).st_mode & 0o777) == 0o600
    assert read_kek_file(path) == (kek, keys.fingerprint())
    path.write_text("{not json")
    with pytest.raises(KluisError) as info:
        read_kek_file(path)
    assert info.value.code == "34506"
    path.unlink()
    with pytest.raises(KluisError) as info:
        read_kek_file(path)
    assert info.value.code == "34506" and str(path) in info.value.message


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(KluisError) as info:
        Repository.open(LocalStore(tmp_path / "empty"), passphrase="x")
    assert info.value.code == "RepoNotFound"
    new_repo(tmp_path / "r")
    with pytest.raises(KluisError) as info:
        Repository.init(LocalStore(tmp_path / "r"), "another passphrase")
    assert info.value.code == "RepoAlreadyExists"
    (tmp_path / "r" / "keys").joinpath(os.listdir(tmp_path / "r" / "keys")[0]).write_text("garbage")
    with pytest.raises(KluisError) as info:
        Repository.open(LocalStore(tmp_path / "r"), passphrase=PASSPHRASE)
    assert info.value.code == "RepoKeyFileCorrupt"


def test_fingerprint_distinguishes_key_sets() -> None:
    a, b = MasterKeys.generate(), MasterKeys.generate()
    assert a.fingerprint() != b.fingerprint()
    assert MasterKeys.from_json(a.to_json()).fingerprint() == a.fingerprint()


def test_registration_proof_is_stable_secret_and_not_the_fingerprint() -> None:
    a, b = MasterKeys.generate(), MasterKeys.generate()
    proof = a.registration_proof()
    assert len(proof) == 64 and proof == MasterKeys.from_json(a.to_json()).registration_proof()
    assert proof != b.registration_proof()
    # Another derivation context: the public fingerprint is no prefix of it.
    assert not proof.startswith(a.fingerprint())

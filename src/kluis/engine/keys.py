"""The master key set and its wrapping by a passphrase-derived key-encryption key (KEK).

A repository has one random master key set: the encryption key (AES-256-GCM for
blobs), the id key (keyed BLAKE3 for chunk ids) and the chunker seed (so chunk
boundaries do not fingerprint content). The set is stored wrapped: encrypted
with a KEK derived from the passphrase by argon2id, the KDF parameters and salt
stored beside it. Changing the passphrase re-wraps the same set; no data changes.

The machine also keeps the KEK itself in a file (mode 0600) in its scratch
folder so scheduled backups run unattended.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kluis.catalog import KluisError

KEY_SIZE = 32
_WRAP_AAD = b"kluis-master-keys-v1"
_KEK_FILE_MAGIC = "kluis-kek-v1"


@dataclass(frozen=True)
class KdfParams:
    """argon2id parameters; stored with every wrapped key set."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 2

    @classmethod
    def for_tests(cls) -> KdfParams:
        """Cheap parameters, used only when KLUIS_FAST_KDF=1 (the test suite)."""
        return cls(time_cost=1, memory_kib=8 * 1024, parallelism=1)

    @classmethod
    def default(cls) -> KdfParams:
        """The production parameters, or cheap ones for the test suite."""
        return cls.for_tests() if os.environ.get("KLUIS_FAST_KDF") == "1" else cls()


@dataclass(frozen=True)
class MasterKeys:
    """The secrets of one repository. Never leaves the machine unwrapped."""

    encryption_key: bytes
    id_key: bytes
    chunker_seed: int

    @classmethod
    def generate(cls) -> MasterKeys:
        """A fresh random key set."""
        # The gear table XORs the seed in; keep it non-zero so the table always changes.
        seed = secrets.randbits(63) | 1
        return cls(secrets.token_bytes(KEY_SIZE), secrets.token_bytes(KEY_SIZE), seed)

    def fingerprint(self) -> str:
        """A public fingerprint of the set: equal fingerprints mean equal keys.

        The vault compares it on re-registration to check the same passphrase unwrapped the
        same keys, without ever seeing them.
        """
        material = self.encryption_key + self.id_key + self.chunker_seed.to_bytes(8, "little")
        return blake3.blake3(material, derive_key_context="kluis 2026 key fingerprint").hexdigest()[:32]

    def registration_proof(self) -> str:
        """A secret only the holder of the keys can compute, for re-registering with a vault.

        The fingerprint is public (it is in every key file and the vault shows it), so it
        cannot prove anything. This value comes from the same keys under another derivation
        context: knowing the fingerprint does not give it, and it does not give the keys.
        The vault stores only its SHA-256.
        """
        material = self.encryption_key + self.id_key + self.chunker_seed.to_bytes(8, "little")
        return blake3.blake3(material, derive_key_context="kluis 2026 registration proof").hexdigest()

    def to_json(self) -> bytes:
        """Serialized form (only ever stored encrypted)."""
        return json.dumps(
            {
                "encryption_key": self.encryption_key.hex(),
                "id_key": self.id_key.hex(),
                "chunker_seed": self.chunker_seed,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> MasterKeys:
        """Inverse of :meth:`to_json`."""
        raw = json.loads(data)
        return cls(
            bytes.fromhex(raw["encryption_key"]), bytes.fromhex(raw["id_key"]), int(raw["chunker_seed"])
        )


def derive_kek(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    """The key-encryption key for a passphrase (argon2id)."""
    return hash_secret_raw(
        passphrase.encode("utf-8"),
        salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=KEY_SIZE,
        type=Type.ID,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True)
class WrappedKeys:
    """A master key set encrypted under a KEK, plus what is needed to derive the KEK again."""

    salt: bytes
    params: KdfParams
    nonce: bytes
    ciphertext: bytes
    fingerprint: str
    created: str = field(default="")

    def to_json(self) -> bytes:
        """The content of a ``keys/<id>`` object (no secret in clear)."""
        return json.dumps(
            {
                "version": 1,
                "kdf": "argon2id",
                "kdf_params": {
                    "time_cost": self.params.time_cost,
                    "memory_kib": self.params.memory_kib,
                    "parallelism": self.params.parallelism,
                },
                "salt": _b64(self.salt),
                "nonce": _b64(self.nonce),
                "wrapped": _b64(self.ciphertext),
                "fingerprint": self.fingerprint,
                "created": self.created,
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, name: str, data: bytes) -> WrappedKeys:
        """Parse a key file; RepoKeyFileCorrupt when it is not one."""
        try:
            raw: dict[str, Any] = json.loads(data)
            if raw.get("version") != 1 or raw.get("kdf") != "argon2id":
                raise ValueError("unknown key file version or KDF")
            p = raw["kdf_params"]
            return cls(
                salt=_unb64(raw["salt"]),
                params=KdfParams(int(p["time_cost"]), int(p["memory_kib"]), int(p["parallelism"])),
                nonce=_unb64(raw["nonce"]),
                ciphertext=_unb64(raw["wrapped"]),
                fingerprint=str(raw["fingerprint"]),
                created=str(raw.get("created", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise KluisError("RepoKeyFileCorrupt", name=name, reason=str(exc)) from None

    def kek_for(self, passphrase: str) -> bytes:
        """Derive the KEK this key file was wrapped with, from a passphrase."""
        return derive_kek(passphrase, self.salt, self.params)

    def unwrap(self, kek: bytes, *, repo: str = "") -> MasterKeys:
        """The master keys; RepoPassphraseIncorrect when the KEK does not fit."""
        try:
            plain = AESGCM(kek).decrypt(self.nonce, self.ciphertext, _WRAP_AAD)
        except (InvalidTag, ValueError):
            raise KluisError("RepoPassphraseIncorrect", repo=repo or "this repository") from None
        keys = MasterKeys.from_json(plain)
        if keys.fingerprint() != self.fingerprint:
            raise KluisError("RepoKeyFileCorrupt", name=repo, reason="fingerprint does not match the keys")
        return keys


def wrap(keys: MasterKeys, passphrase: str, params: KdfParams | None = None) -> tuple[WrappedKeys, bytes]:
    """Wrap ``keys`` under a KEK derived from ``passphrase``; returns the key file and the KEK."""
    import datetime as _dt

    params = params or KdfParams.default()
    salt = secrets.token_bytes(16)
    kek = derive_kek(passphrase, salt, params)
    nonce = secrets.token_bytes(12)
    ciphertext = AESGCM(kek).encrypt(nonce, keys.to_json(), _WRAP_AAD)
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return WrappedKeys(salt, params, nonce, ciphertext, keys.fingerprint(), created), kek


def rewrap(wrapped: WrappedKeys, old_passphrase: str, new_passphrase: str) -> tuple[WrappedKeys, bytes]:
    """Change the passphrase: same master keys, new salt and KEK. No data is touched."""
    keys = wrapped.unwrap(wrapped.kek_for(old_passphrase))
    return wrap(keys, new_passphrase, wrapped.params)


def write_kek_file(path: Path, kek: bytes, fingerprint: str) -> None:
    """Store the KEK for unattended runs: mode 0600, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"format": _KEK_FILE_MAGIC, "kek": kek.hex(), "fingerprint": fingerprint}, f)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_kek_file(path: Path) -> tuple[bytes, str]:
    """The KEK and key-set fingerprint from a KEK file; catalog error 34506 when missing or bad."""
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != _KEK_FILE_MAGIC:
            raise ValueError("not a KEK file")
        kek = bytes.fromhex(raw["kek"])
        if len(kek) != KEY_SIZE:
            raise ValueError("wrong key length")
        return kek, str(raw["fingerprint"])
    except FileNotFoundError:
        raise KluisError("34506", path=str(path), detail="the KEK file is missing") from None
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise KluisError("34506", path=str(path), detail=f"the KEK file is unreadable: {exc}") from None

"""Turning chunks into blobs and back: keyed id, zstd, AES-256-GCM.

A codec is cheap to create; make one per thread, because it keeps a zstd
context and scratch buffers that are reused on the hot path (fresh large
allocations are slow on small VMs).
"""

from __future__ import annotations

import os
import secrets

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kluis.catalog import KluisError
from kluis.engine.format import BLOB_OVERHEAD, NONCE_SIZE, TAG_SIZE, BlobFlags, BlobType, associated_data
from kluis.engine.keys import MasterKeys

# zstd level 3, as restic's and borg's defaults. On /usr/lib + /usr/share (4.7 GB) a repository
# took 1662 MB at level 3 and 1706 MB at level 2, restic's 1689 MB; the first backup took about
# 5% longer (14% more CPU time), and restores decompress as fast. Level 4 saved 0.5% more for
# another 16% of compression time (benchmarks/profile_notes.md).
DEFAULT_LEVEL = 3
# Compression that saves less than this share is not worth the decompression on restore.
_MIN_SAVING = 0.03
# Sample size for the incompressibility probe of large chunks.
_PROBE = 64 * 1024
_NONCE_MASK = (1 << (8 * NONCE_SIZE)) - 1


def compression_level() -> int:
    """The zstd level, overridable with KLUIS_ZSTD_LEVEL for measurements."""
    return int(os.environ.get("KLUIS_ZSTD_LEVEL", DEFAULT_LEVEL))


class BlobCodec:
    """Encodes and decodes blobs of one repository. Not thread-safe: one per thread."""

    def __init__(self, keys: MasterKeys, level: int | None = None) -> None:
        self.keys = keys
        self._aead = AESGCM(keys.encryption_key)
        self._level = compression_level() if level is None else level
        self._cctx = zstandard.ZstdCompressor(level=self._level) if self._level > 0 else None
        self._probe_cctx = zstandard.ZstdCompressor(level=1)
        self._dctx = zstandard.ZstdDecompressor()
        self._plain = bytearray(1 << 20)
        # Nonces: a random 96-bit start, then +1 per blob. Two codecs collide only if their
        # ranges overlap, which is as unlikely as two random nonces meeting, and no blob
        # pays for a getrandom call.
        self._nonce = int.from_bytes(secrets.token_bytes(NONCE_SIZE), "little")

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        """Keyed BLAKE3-256 of the plaintext."""
        return blake3.blake3(data, key=self.keys.id_key).digest()

    def _compress(self, data: bytes | bytearray | memoryview) -> tuple[bytes | bytearray | memoryview, int]:
        if self._cctx is None or len(data) < 64:
            return data, BlobFlags.NONE
        if len(data) > 4 * _PROBE:
            # Probe a sample first: already-compressed media would cost a full zstd pass for nothing.
            sample = memoryview(data)[:_PROBE]
            if len(self._probe_cctx.compress(sample)) > len(sample) * (1 - _MIN_SAVING):
                return data, BlobFlags.NONE
        packed = self._cctx.compress(data)
        if len(packed) > len(data) * (1 - _MIN_SAVING):
            return data, BlobFlags.NONE
        return packed, BlobFlags.ZSTD

    def encoded_size_bound(self, raw_length: int) -> int:
        """An upper bound for the encoded size of a chunk of ``raw_length`` bytes."""
        return raw_length + BLOB_OVERHEAD

    def encode_into(
        self,
        blob_id: bytes,
        blob_type: BlobType,
        data: bytes | bytearray | memoryview,
        out: memoryview,
    ) -> tuple[int, int]:
        """Compress and encrypt ``data`` into ``out``; returns (bytes written, flags).

        ``out`` must hold at least :meth:`encoded_size_bound` bytes.
        """
        payload, flags = self._compress(data)
        self._nonce = (self._nonce + 1) & _NONCE_MASK
        nonce = self._nonce.to_bytes(NONCE_SIZE, "little")
        out[:NONCE_SIZE] = nonce
        end = NONCE_SIZE + len(payload) + TAG_SIZE
        # encrypt_into wants a buffer of exactly ciphertext + tag bytes.
        self._aead.encrypt_into(
            nonce, payload, associated_data(blob_id, blob_type, flags), out[NONCE_SIZE:end]
        )
        return end, flags

    def encode(
        self, blob_id: bytes, blob_type: BlobType, data: bytes | bytearray | memoryview
    ) -> tuple[bytes, int]:
        """Like :meth:`encode_into` but returns a new bytes object (for small, cold paths)."""
        buf = bytearray(self.encoded_size_bound(len(data)))
        n, flags = self.encode_into(blob_id, blob_type, data, memoryview(buf))
        return bytes(buf[:n]), flags

    def decode_view(
        self,
        blob_id: bytes,
        blob_type: int,
        flags: int,
        blob: bytes | bytearray | memoryview,
        raw_length: int,
        *,
        pack: str = "?",
    ) -> bytes | memoryview:
        """Like :meth:`decode`, but decrypts into this codec's reused buffer.

        The result may be a view of that buffer: valid only until the next call on this
        codec (this thread). For hot paths that consume the data at once (restore).
        """
        if len(blob) < BLOB_OVERHEAD:
            raise KluisError("RepoBlobCorrupt", blob=blob_id.hex(), pack=pack)
        size = len(blob) - BLOB_OVERHEAD
        if len(self._plain) < size:
            self._plain = bytearray(max(size, 2 * len(self._plain)))
        out = memoryview(self._plain)[:size]
        view = memoryview(blob)
        try:
            self._aead.decrypt_into(
                view[:NONCE_SIZE], view[NONCE_SIZE:], associated_data(blob_id, blob_type, flags), out
            )
        except (InvalidTag, ValueError):
            raise KluisError("RepoBlobCorrupt", blob=blob_id.hex(), pack=pack) from None
        data: bytes | memoryview = out
        if flags & BlobFlags.ZSTD:
            try:
                data = self._dctx.decompress(out, max_output_size=raw_length)
            except zstandard.ZstdError:
                raise KluisError("RepoBlobCorrupt", blob=blob_id.hex(), pack=pack) from None
        if len(data) != raw_length or self.chunk_id(data) != blob_id:
            raise KluisError("RepoBlobCorrupt", blob=blob_id.hex(), pack=pack)
        return data

    def decode(
        self,
        blob_id: bytes,
        blob_type: int,
        flags: int,
        blob: bytes | bytearray | memoryview,
        raw_length: int,
        *,
        pack: str = "?",
        verify_id: bool = True,
    ) -> bytes:
        """Decrypt, decompress and check a blob; RepoBlobCorrupt when anything is off."""
        if len(blob) < BLOB_OVERHEAD:
            raise KluisError("RepoBlobCorrupt", blob=blob_id.hex(), pack=pack)
        view = memoryview(blob)
        try:
            payload = self._aead.decrypt(
                view[:NONCE_SIZE], view[NONCE_SIZE:], associated_data(blob_id, blob_type, flags)
            )
        except (InvalidTag, ValueError):
            raise KluisError("RepoBlobCorrupt", blob=blob_id.hex(), pack=pack) from None
        if flags & BlobFlags.ZSTD:
            try:
                data = self._dctx.decompress(payload, max_output_size=raw_length)
            except zstandard.ZstdError:
                raise KluisError("RepoBlobCorrupt", blob=blob_id.hex(), pack=pack) from None
        else:
            data = payload
        if len(data) != raw_length or (verify_id and self.chunk_id(data) != blob_id):
            raise KluisError("RepoBlobCorrupt", blob=blob_id.hex(), pack=pack)
        return data

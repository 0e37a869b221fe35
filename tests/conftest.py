"""Suite-wide settings: cheap key derivation, so tests spend their time on real work."""

from __future__ import annotations

import os

# argon2id with production parameters takes ~0.3 s per unlock; the format is the same.
os.environ.setdefault("KLUIS_FAST_KDF", "1")

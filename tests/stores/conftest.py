"""Store fixtures: every backend the conformance suite runs against.

Add a backend by adding its name to ``BACKENDS`` and a branch in ``store``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kluis.stores import LocalStore, Store

BACKENDS = ["local"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store of each backend."""
    if request.param == "local":
        s: Store = LocalStore(tmp_path / "store")
    else:  # pragma: no cover - filled in as backends are added
        raise AssertionError(request.param)
    yield s
    s.close()

"""Collector settings while jobs run (engine/tuning.py)."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from kluis.engine.tuning import fewer_collections


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _nothing_frozen() -> Iterator[None]:
    gc.unfreeze()
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_thresholds_raised_and_old_objects_frozen_while_a_job_runs() -> None:
    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold()[0] > before[0]
        # Everything that existed when the job started is out of the collector's way.
        assert gc.get_freeze_count() > 1000
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_overlapping_jobs_restore_the_settings_only_when_the_last_one_ends() -> None:
    before = gc.get_threshold()
    first_in = threading.Event()
    release_first = threading.Event()
    seen: list[tuple[int, int, int]] = []

    def first() -> None:
        with fewer_collections():
            first_in.set()
            release_first.wait(10)
            seen.append(gc.get_threshold())

    t = threading.Thread(target=first)
    t.start()
    assert first_in.wait(10)
    with fewer_collections():
        pass
    # The second job ended first: the first one still runs with the raised thresholds.
    assert gc.get_threshold() != before
    assert gc.get_freeze_count() > 0
    release_first.set()
    t.join(10)
    assert seen[0] != before
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_garbage_made_before_a_job_is_still_collected_after_it() -> None:
    cycle = _Cycle()
    ref = weakref.ref(cycle)
    del cycle
    with fewer_collections():
        gc.collect()
        assert ref() is not None  # frozen with everything else from before the job
    gc.collect()
    assert ref() is None


def test_a_process_that_froze_objects_itself_keeps_them_frozen() -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()
    with fewer_collections():
        pass
    assert gc.get_freeze_count() >= frozen


def test_settings_are_restored_when_the_job_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("the job failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0

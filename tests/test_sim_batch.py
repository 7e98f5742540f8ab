"""Batch labelling over worker processes: order, isolation of crashing / hanging items, time limits."""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np
import pytest

from dso.config import SimSettings
from dso.sim import OraclePool, label_batch, simulate
from dso.sim.batch import resolve_workers
from dso.sim.verdict import SimStatus


class SegfaultsWhenUnpickled:
    """Reading address 0 in the worker: a real segmentation fault, as a broken native library would cause."""

    def __reduce__(self):
        return (ctypes.string_at, (0,))


class HangsWhenUnpickled:
    """Blocks the worker far beyond any deadline."""

    def __reduce__(self):
        return (time.sleep, (3600,))


def block(offset: int = 0) -> np.ndarray:
    occ = np.zeros((16, 16, 16), dtype=bool)
    occ[4 + offset : 10 + offset, 4:10, 0:6] = True
    return occ


def test_bad_items_never_take_the_batch_down():
    items = [block(), SegfaultsWhenUnpickled(), block(1), HangsWhenUnpickled(), np.zeros((16, 16, 16), bool), block(2)]
    seen = []
    start = time.monotonic()
    verdicts = label_batch(items, SimSettings(item_timeout_s=2.0), workers=2, on_result=lambda i, v: seen.append(i))  # well above a block's simulation on a loaded box
    assert time.monotonic() - start < 60
    assert [v.status for v in verdicts] == [
        SimStatus.ok,
        SimStatus.sim_error,
        SimStatus.ok,
        SimStatus.timeout,
        SimStatus.invalid_input,
        SimStatus.ok,
    ]
    assert "died" in verdicts[1].message and "-11" in verdicts[1].message
    assert "killed and replaced" in verdicts[3].message
    assert sorted(seen) == list(range(len(items)))
    # results are in input order: the three blocks differ only by x offset, so their com x does too
    assert verdicts[0].com[0] < verdicts[2].com[0] < verdicts[5].com[0]


def test_pool_is_reusable_and_matches_in_process_results():
    items = [block(0), block(3)]
    with OraclePool(SimSettings(), workers=1) as pool:
        first = pool.map(items)
        second = pool.map(items[::-1])
    assert [v.com for v in first] == [v.com for v in second[::-1]]
    local = simulate(items[1])
    assert first[1].tilt_deg == pytest.approx(local.tilt_deg) and first[1].steps == local.steps
    with pytest.raises(RuntimeError, match="closed"):
        pool.map(items)


def test_wall_clock_limit_inside_the_step_loop():
    settings = SimSettings(item_timeout_s=0.05, early_stop=False, max_time=1000.0)
    start = time.monotonic()
    v = simulate(block(), settings)
    assert v.status == SimStatus.timeout
    assert "wall-clock limit" in v.message
    assert 0 < v.sim_time_s < 1000.0
    assert time.monotonic() - start < 2.0


def test_empty_batch_and_worker_count():
    assert label_batch([]) == []
    assert resolve_workers(0, SimSettings()) == (os.cpu_count() or 1)
    assert resolve_workers(None, SimSettings(workers=3)) == 3
    with pytest.raises(ValueError):
        resolve_workers(-1, SimSettings())

"""Label many inputs over a pool of worker processes that survives bad items.

Each worker runs ``simulate`` one item at a time. The parent gives every item
a hard deadline (the in-worker wall-clock limit plus a grace period): a worker
that overruns it is killed and replaced (verdict ``timeout``); a worker that
dies (segfault, OOM kill) is replaced too (verdict ``sim_error``). One bad item
never takes the batch down, and results come back in input order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from dso.config import SimSettings
from dso.sim.inputs import SimInput
from dso.sim.oracle import simulate
from dso.sim.verdict import SimStatus, Verdict

# The parent's hard deadline per item: the in-worker limit times this, plus a fixed grace.
_DEADLINE_FACTOR = 1.5
_DEADLINE_GRACE_S = 2.0


def resolve_workers(workers: int | None, settings: SimSettings) -> int:
    """``None`` -> settings.workers; 0 -> one per CPU core."""
    n = settings.workers if workers is None else workers
    if n < 0:
        raise ValueError(f"workers must be >= 0, got {n}")
    return n or (os.cpu_count() or 1)


def _worker_main(conn: Connection, settings_json: str) -> None:
    """Worker loop: receive (index, item), send (index, verdict JSON); None ends it."""
    settings = SimSettings.model_validate_json(settings_json)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        index, item = message
        conn.send((index, simulate(item, settings).model_dump_json()))


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    index: int | None = None  # item in flight
    deadline: float = 0.0


class _Pool:
    """Fixed-size set of worker processes, replaced when they hang or die."""

    def __init__(self, size: int, settings: SimSettings, context: str):
        self._ctx = mp.get_context(context)
        self._settings_json = settings.model_dump_json()
        self.hard_timeout_s = settings.item_timeout_s * _DEADLINE_FACTOR + _DEADLINE_GRACE_S
        self.workers = [self._start() for _ in range(size)]

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child, self._settings_json), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def submit(self, worker: _Worker, index: int, item: SimInput) -> None:
        worker.index = index
        worker.deadline = time.monotonic() + self.hard_timeout_s
        worker.conn.send((index, item))

    def replace(self, worker: _Worker) -> None:
        """Kill a worker (if still alive) and put a fresh one in its place."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()
        self.workers[self.workers.index(worker)] = self._start()

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in self.workers:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()


def label_batch(
    items: Sequence[SimInput],
    settings: SimSettings | None = None,
    workers: int | None = None,
    on_result: Callable[[int, Verdict], None] | None = None,
    context: str = "spawn",
) -> list[Verdict]:
    """Verdicts for ``items`` in order, computed by a process pool (``workers``: None -> settings, 0 -> all cores).

    ``on_result(index, verdict)`` is called as each item finishes (in completion order).
    """
    settings = settings or SimSettings()
    results: list[Verdict | None] = [None] * len(items)
    if not items:
        return []
    pending = deque(range(len(items)))
    pool = _Pool(min(resolve_workers(workers, settings), len(items)), settings, context)

    def finish(index: int, verdict: Verdict) -> None:
        results[index] = verdict
        if on_result is not None:
            on_result(index, verdict)

    try:
        while pending or any(w.index is not None for w in pool.workers):
            for worker in pool.workers:
                if worker.index is None and pending:
                    index = pending.popleft()
                    try:
                        pool.submit(worker, index, items[index])
                    except Exception as exc:  # unpicklable item, or the worker already died
                        worker.index = None
                        finish(index, Verdict.failure(SimStatus.invalid_input, f"cannot send item to worker: {exc}"))
                        pool.replace(worker)
            busy = [w for w in pool.workers if w.index is not None]
            if not busy:
                continue
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=timeout)
            now = time.monotonic()
            for worker in busy:
                index = worker.index
                assert index is not None
                if worker.conn in ready:
                    try:
                        _, payload = worker.conn.recv()
                        finish(index, Verdict.model_validate_json(payload))
                        worker.index = None
                        continue
                    except (EOFError, OSError):
                        pass  # died while answering: handled as a dead worker below
                if worker.process.sentinel in ready or not worker.process.is_alive():
                    worker.process.join(timeout=1)
                    code = worker.process.exitcode
                    finish(index, Verdict.failure(SimStatus.sim_error, f"worker process died (exit code {code})"))
                    worker.index = None
                    pool.replace(worker)
                elif now >= worker.deadline:
                    finish(
                        index,
                        Verdict.failure(
                            SimStatus.timeout,
                            f"worker did not answer within {pool.hard_timeout_s:g} s; killed and replaced",
                            elapsed_s=pool.hard_timeout_s,
                        ),
                    )
                    worker.index = None
                    pool.replace(worker)
    finally:
        pool.close()
    return _fill(results)


def _fill(results: list[Verdict | None]) -> list[Verdict]:
    """Never return holes: anything unanswered is a sim_error."""
    return [v or Verdict.failure(SimStatus.sim_error, "no result (batch interrupted)") for v in results]

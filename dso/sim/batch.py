"""Label many inputs over a pool of worker processes that survives bad items.

Each worker runs the configured oracle's ``simulate`` (``settings.oracle``) one item at a time. The parent gives every item
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
from dso.sim.contract import make_oracle
from dso.sim.verdict import SimStatus, Verdict

# The parent's hard deadline per item: the in-worker limit times this, plus a fixed grace.
_DEADLINE_FACTOR = 1.5
_DEADLINE_GRACE_S = 2.0
_READY = "ready"
_MAX_START_FAILURES = 3  # fresh workers dying before they are ready means a broken environment


def resolve_workers(workers: int | None, settings: SimSettings) -> int:
    """``None`` -> settings.workers; 0 -> one per CPU core."""
    n = settings.workers if workers is None else workers
    if n < 0:
        raise ValueError(f"workers must be >= 0, got {n}")
    return n or (os.cpu_count() or 1)


def _worker_main(conn: Connection, settings_json: str) -> None:
    """Worker loop: receive (index, item), send (index, verdict JSON); None ends it."""
    settings = SimSettings.model_validate_json(settings_json)
    oracle = make_oracle(settings)  # the oracle settings.oracle names
    conn.send(_READY)  # imports done: item deadlines start counting only from here
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        index, item = message
        conn.send((index, oracle.simulate(item).model_dump_json()))


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    index: int | None = None  # item in flight
    deadline: float = 0.0
    ready: bool = False


class OraclePool:
    """A reusable pool of oracle worker processes (start once, label many batches).

    Workers that overrun the hard deadline or die are killed and replaced, and
    the item gets a ``timeout`` or ``sim_error`` verdict. Use as a context
    manager, or call ``close()``.
    """

    def __init__(self, settings: SimSettings | None = None, workers: int | None = None, context: str = "spawn"):
        settings = settings or SimSettings()
        self._ctx = mp.get_context(context)
        self._settings_json = settings.model_dump_json()
        self.hard_timeout_s = settings.item_timeout_s * _DEADLINE_FACTOR + _DEADLINE_GRACE_S
        self._start_failures = 0
        self.workers = [self._start() for _ in range(resolve_workers(workers, settings))]

    def __enter__(self) -> "OraclePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child, self._settings_json), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def _submit(self, worker: _Worker, index: int, item: SimInput) -> None:
        worker.index = index
        worker.deadline = time.monotonic() + self.hard_timeout_s
        worker.conn.send((index, item))

    def _replace(self, worker: _Worker) -> None:
        """Kill a worker (if still alive) and put a fresh one in its place."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()
        self.workers[self.workers.index(worker)] = self._start()

    def _mark_ready(self, worker: _Worker) -> None:
        """Read the worker's ready message, or replace it if it died while starting."""
        try:
            worker.ready = worker.conn.recv() == _READY
            self._start_failures = 0
        except (EOFError, OSError):
            self._start_failures += 1
            if self._start_failures > _MAX_START_FAILURES * max(1, len(self.workers)):
                raise RuntimeError("oracle worker processes die while starting; check that dso.sim imports") from None
            self._replace(worker)

    def _await_starting(self) -> bool:
        """With nothing in flight, block until some starting worker is ready; True if it waited."""
        if any(w.index is not None or w.ready for w in self.workers):
            return False
        starting = [w for w in self.workers if not w.ready]
        for conn in wait([w.conn for w in starting]):
            self._mark_ready(next(w for w in starting if w.conn is conn))
        return True

    def close(self) -> None:
        """Stop every worker (politely, then by force)."""
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
        self.workers = []

    def map(self, items: Sequence[SimInput], on_result: Callable[[int, Verdict], None] | None = None) -> list[Verdict]:
        """Verdicts for ``items`` in input order; ``on_result(index, verdict)`` as each finishes."""
        if not self.workers:
            raise RuntimeError("OraclePool is closed")
        results: list[Verdict | None] = [None] * len(items)
        pending = deque(range(len(items)))

        def finish(worker: _Worker, verdict: Verdict) -> None:
            index = worker.index
            assert index is not None
            worker.index = None
            results[index] = verdict
            if on_result is not None:
                on_result(index, verdict)

        while pending or any(w.index is not None for w in self.workers):
            for worker in list(self.workers):
                if worker.ready and worker.index is None and pending:
                    index = pending.popleft()
                    try:
                        self._submit(worker, index, items[index])
                    except Exception as exc:  # unpicklable item, or the worker already died
                        finish(worker, Verdict.failure(SimStatus.invalid_input, f"cannot send item to worker: {exc}"))
                        self._replace(worker)
            if self._await_starting():
                continue
            busy = [w for w in self.workers if w.index is not None]
            if not busy:
                continue
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            starting = [w.conn for w in self.workers if not w.ready] if pending else []
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy] + starting, timeout=timeout)
            now = time.monotonic()
            for worker in self.workers:
                if not worker.ready and worker.conn in ready:
                    self._mark_ready(worker)
            for worker in busy:
                if worker.conn in ready:
                    try:
                        _, payload = worker.conn.recv()
                        finish(worker, Verdict.model_validate_json(payload))
                        continue
                    except (EOFError, OSError):
                        pass  # died while answering: handled as a dead worker below
                if worker.process.sentinel in ready or not worker.process.is_alive():
                    worker.process.join(timeout=1)
                    code = worker.process.exitcode
                    finish(worker, Verdict.failure(SimStatus.sim_error, f"worker process died (exit code {code})"))
                    self._replace(worker)
                elif now >= worker.deadline:
                    message = f"worker did not answer within {self.hard_timeout_s:g} s; killed and replaced"
                    finish(worker, Verdict.failure(SimStatus.timeout, message, elapsed_s=self.hard_timeout_s))
                    self._replace(worker)
        return [v or Verdict.failure(SimStatus.sim_error, "no result") for v in results]


def label_batch(
    items: Sequence[SimInput],
    settings: SimSettings | None = None,
    workers: int | None = None,
    on_result: Callable[[int, Verdict], None] | None = None,
    context: str = "spawn",
) -> list[Verdict]:
    """Verdicts for ``items`` in order, from a pool started for this call (``workers``: None -> settings, 0 -> all cores)."""
    if not items:
        return []
    settings = settings or SimSettings()
    size = min(resolve_workers(workers, settings), len(items))
    with OraclePool(settings, size, context) as pool:
        return pool.map(items, on_result)

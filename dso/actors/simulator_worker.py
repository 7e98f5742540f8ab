"""Simulator role: take samples from the ``samples`` stream, label them with the oracle, pass them on.

The oracle is the one ``settings.sim.oracle`` names (``dso.sim.contract.make_oracle``). It judges
the sample's mesh when a mesh-emitting generator made one (``SampleRecord.mesh``, a z-up
``trimesh.Trimesh`` to the oracle, so ``sim.mode``/``mesh_voxels``/``max_faces`` apply), else its
occupancy grid. Its ``Verdict`` goes into the labelled record unchanged, failure verdicts (invalid input,
simulator error, timeout) included: those are labelled and counted as invalid, not retried.

Delivery is at-least-once: the labelled record is enqueued *before* the sample
entry is acked, so a worker killed in between only causes a second copy with
the same sample id, which the replay buffer drops. A worker killed mid-item
leaves its entry pending; another worker reclaims it once it has been idle for
``broker.claim_idle_ms``. An item that makes the simulator raise is left
pending too, and after ``broker.max_deliveries`` deliveries the reclaim moves it
to the dead-letter stream, so one poison input never stalls the loop.

Every verdict is counted in the process's Prometheus metrics
(``dso_samples_labelled_total``, ``dso_simulation_duration_seconds``); the run's
exactly-once counts (StatsStore, per-prompt stats) are kept by the learner when
it ingests a sample id for the first time.
"""

from __future__ import annotations

import logging

from dso import telemetry
from dso.broker.broker import Broker
from dso.broker.records import LabelledRecord, RecordDecodeError, SampleRecord
from dso.broker.streams import Delivery
from dso.config import Settings
from dso.sim.contract import Oracle, make_oracle

log = logging.getLogger(__name__)


class SimulatorWorker:
    """One consumer of the ``samples`` stream."""

    def __init__(self, broker: Broker, settings: Settings, name: str = "simulator-0", oracle: Oracle | None = None):
        self.broker = broker
        self.settings = settings
        self.name = name
        self.oracle = oracle if oracle is not None else make_oracle(settings.sim)
        self.labelled = 0
        self.failed = 0
        self.dead_lettered = 0

    def take(self, block_ms: int | None = None) -> list[Delivery]:
        """Reclaimed work of dead consumers first (past-limit entries get dead-lettered there), then new entries."""
        count = self.settings.loop.simulator_batch
        reclaimed = self.broker.samples.reclaim(self.name, count=count)
        if reclaimed:
            return reclaimed
        return self.broker.samples.read(self.name, count=count, block_ms=block_ms)

    def step(self, block_ms: int | None = None) -> int:
        """Label whatever one ``take`` returns; returns how many items were labelled."""
        done = 0
        for delivery in self.take(block_ms):
            done += int(self.label(delivery))
        return done

    def label(self, delivery: Delivery) -> bool:
        """Simulate one delivery and hand its labelled record on; False when it stays pending or is dead."""
        try:
            sample = SampleRecord.from_bytes(delivery.payload)
        except (RecordDecodeError, ValueError) as exc:
            self.broker.samples.dead_letter(delivery, f"undecodable sample record: {exc}")
            self.dead_lettered += 1
            return False
        try:
            verdict = self.oracle.simulate(sample.oracle_input())  # the generator's mesh if it made one, else the grid
            labelled = LabelledRecord.from_verdict(sample, verdict)
        except Exception as exc:  # noqa: BLE001 - an oracle that raises leaves the entry for reclaim / dead-letter
            self.failed += 1
            log.warning(
                "%s: simulating sample %s failed (delivery %d of %d): %s",
                self.name, sample.sample_id, delivery.deliveries, self.broker.settings.max_deliveries, exc,
            )
            return False
        self.broker.labelled.put(sample.sample_id, labelled.to_bytes())
        self.broker.samples.ack([delivery.entry_id])
        telemetry.observe_labelled(verdict)
        self.labelled += 1
        return True

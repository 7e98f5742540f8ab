"""The data plane of one run, wired together: what actors, API and jobs open first.

``Broker.open(settings)`` connects to the configured Redis (or starts the embedded
Valkey), creates the consumer groups and hands out the components that share one
client and one key prefix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from dso.broker.adapter_store import AdapterStore
from dso.broker.admission import AdmissionControl
from dso.broker.adoptions import AdoptionLog
from dso.broker.keys import KeySpace
from dso.broker.metrics_targets import MetricsTargetStore
from dso.broker.prompts import PromptStore
from dso.broker.promotion import PromotionStore
from dso.broker.registry import AdapterRegistry
from dso.broker.replay import ReplayBuffer
from dso.broker.server import BrokerConnection, connect
from dso.broker.stats import StatsStore
from dso.broker.streams import WorkQueue
from dso.config import BrokerSettings

log = logging.getLogger(__name__)


def announce_unregistered(adapters: AdapterStore, registry: AdapterRegistry) -> list[int]:
    """Announce the store's versions the registry lacks, oldest first; returns them.

    The registry is the fleet's record of what is published; this brings it back in line with
    the files after a publisher died between its rename and its announcement, or after the
    registry lost its data (a fresh Redis over an old run directory).
    """
    known = set(registry.versions())
    missing = [version for version in adapters.versions() if version not in known]
    for version in missing:
        registry.announce(adapters.manifest(version))
    if missing:
        log.warning("announced adapter versions %s found in %s but not in the registry", missing, adapters.url)
    return missing


@dataclass
class Broker:
    """All broker components of one run over one connection."""

    settings: BrokerSettings
    connection: BrokerConnection
    samples: WorkQueue  # generators -> simulators
    labelled: WorkQueue  # simulators -> learner
    replay: ReplayBuffer
    prompts: PromptStore
    registry: AdapterRegistry
    adapters: AdapterStore  # files; announces to ``registry``
    admission: AdmissionControl
    stats: StatsStore
    promotion: PromotionStore  # canary scores and the promoted version generators follow
    adoptions: AdoptionLog  # when each generator first sampled from each version (the run's record)
    targets: MetricsTargetStore  # where each process serves /metrics (dso.telemetry.MetricsTargets)

    @property
    def keys(self) -> KeySpace:
        """The run's key space: every Redis key of the run is spelled by it, and only inside ``dso.broker``."""
        return KeySpace(self.settings.key_prefix)

    @property
    def url(self) -> str:
        """Give this to other processes (Ray actors) so they connect to the same server."""
        return self.connection.url

    def ping(self) -> bool:
        """True when the server answers (raises ``dso.broker.BrokerError`` when it does not)."""
        return bool(self.connection.client.ping())

    def server_counters(self) -> dict[str, float]:
        """The server's memory, traffic and CPU counters (INFO memory, stats, cpu), for load tests and capacity planning."""
        client = self.connection.client
        info = {**client.info("memory"), **client.info("stats"), **client.info("cpu")}
        names = ("used_memory", "total_commands_processed", "total_net_input_bytes", "total_net_output_bytes",
                 "used_cpu_sys", "used_cpu_user")
        return {name: float(info.get(name, 0)) for name in names}

    def transaction(self) -> Any:
        """A write batch applied all or nothing on ``execute()``.

        Pass it as ``pipe=`` to writers that take one (``WorkQueue.put``, ``StatsStore.record_generated``).
        """
        return self.connection.client.pipeline(transaction=True)

    @classmethod
    def open(cls, settings: BrokerSettings) -> Broker:
        connection = connect(settings)
        try:
            return cls.over(connection, settings)
        except Exception:
            connection.close()
            raise

    @classmethod
    def over(cls, connection: BrokerConnection, settings: BrokerSettings) -> Broker:
        """Build the components on an existing connection."""
        client = connection.client
        keys = KeySpace(settings.key_prefix)
        samples = WorkQueue(client, keys, settings.samples_stream, settings.simulator_group, settings)
        labelled = WorkQueue(client, keys, settings.labelled_stream, settings.learner_group, settings)
        for queue in (samples, labelled):
            queue.ensure_group()
        registry = AdapterRegistry(client, keys, settings)
        adapters = AdapterStore.from_settings(settings, notifier=registry)
        announce_unregistered(adapters, registry)
        return cls(
            settings=settings,
            connection=connection,
            samples=samples,
            labelled=labelled,
            replay=ReplayBuffer(client, keys, settings),
            prompts=PromptStore(client, keys, settings),
            registry=registry,
            adapters=adapters,
            admission=AdmissionControl([samples, labelled], settings.max_backlog),
            stats=StatsStore(client, keys, settings, queues=[samples, labelled], registry=registry),
            promotion=PromotionStore(client, keys),
            adoptions=AdoptionLog(client, keys),
            targets=MetricsTargetStore(client, keys),
        )

    def close(self) -> None:
        """Close the client; stops the embedded server if this process started it."""
        self.connection.close()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The data plane: Redis streams, replay buffer, prompt store, adapter store and registry, live stats.

Start with ``Broker.open(settings.broker)``; the modules below can also be used alone.
This package owns every Redis key and structure of a run (``KeySpace`` spells them,
``Broker.keys`` is the run's key space): roles, the API, jobs and telemetry read and
write only through its components' methods and never import redis-py (an
import-linter contract in pyproject.toml holds them to it).
"""

from dso.broker.adapter_store import (
    AdapterIntegrityError,
    AdapterManifest,
    AdapterStore,
    AdapterStoreError,
)
from dso.broker.admission import AdmissionControl
from dso.broker.adoptions import Adoption, AdoptionLog
from dso.broker.broker import Broker
from dso.broker.errors import BROKER_UNAVAILABLE, BrokerError
from dso.broker.keys import KeySpace
from dso.broker.metrics_targets import MetricsTargetStore
from dso.broker.prompts import Prompt, PromptAdded, PromptStore, PromptSummary, UnknownPromptError, prompt_id_for
from dso.broker.records import LabelledRecord, RecordDecodeError, SampleRecord, Verdict, new_sample_id
from dso.broker.registry import AdapterRegistry
from dso.broker.replay import IngestResult, ReplayBatch, ReplayBuffer
from dso.broker.server import BrokerConnection, BrokerServerError, EmbeddedValkey, connect
from dso.broker.stats import StatsStore, VerdictEvent
from dso.broker.streams import Delivery, QueueDepth, WorkQueue

__all__ = [
    "BROKER_UNAVAILABLE",
    "AdapterIntegrityError",
    "AdapterManifest",
    "AdapterRegistry",
    "AdapterStore",
    "AdapterStoreError",
    "AdmissionControl",
    "Adoption",
    "AdoptionLog",
    "Broker",
    "BrokerConnection",
    "BrokerError",
    "BrokerServerError",
    "Delivery",
    "EmbeddedValkey",
    "IngestResult",
    "KeySpace",
    "LabelledRecord",
    "MetricsTargetStore",
    "Prompt",
    "PromptAdded",
    "PromptStore",
    "PromptSummary",
    "QueueDepth",
    "RecordDecodeError",
    "ReplayBatch",
    "ReplayBuffer",
    "SampleRecord",
    "StatsStore",
    "UnknownPromptError",
    "Verdict",
    "VerdictEvent",
    "WorkQueue",
    "connect",
    "new_sample_id",
    "prompt_id_for",
]

"""The data plane: Redis streams, replay buffer, prompt store, adapter store and registry, live stats.

Start with ``Broker.open(settings.broker)``; the modules below can also be used alone.
"""

from dso.broker.adapter_store import (
    AdapterIntegrityError,
    AdapterManifest,
    AdapterStore,
    AdapterStoreError,
)
from dso.broker.admission import AdmissionControl
from dso.broker.broker import Broker
from dso.broker.keys import KeySpace
from dso.broker.prompts import Prompt, PromptAdded, PromptStore, UnknownPromptError, prompt_id_for
from dso.broker.records import LabelledRecord, RecordDecodeError, SampleRecord, Verdict, new_sample_id
from dso.broker.registry import AdapterRegistry
from dso.broker.replay import IngestResult, ReplayBatch, ReplayBuffer
from dso.broker.server import BrokerConnection, BrokerServerError, EmbeddedValkey, connect
from dso.broker.stats import StatsStore
from dso.broker.streams import Delivery, QueueDepth, WorkQueue

__all__ = [
    "AdapterIntegrityError",
    "AdapterManifest",
    "AdapterRegistry",
    "AdapterStore",
    "AdapterStoreError",
    "AdmissionControl",
    "Broker",
    "BrokerConnection",
    "BrokerServerError",
    "Delivery",
    "EmbeddedValkey",
    "IngestResult",
    "KeySpace",
    "LabelledRecord",
    "Prompt",
    "PromptAdded",
    "PromptStore",
    "QueueDepth",
    "RecordDecodeError",
    "ReplayBatch",
    "ReplayBuffer",
    "SampleRecord",
    "StatsStore",
    "UnknownPromptError",
    "Verdict",
    "WorkQueue",
    "connect",
    "new_sample_id",
    "prompt_id_for",
]

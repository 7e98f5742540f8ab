"""Adapter store (files) and registry (Redis): atomic publish, crash safety, integrity, notification."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import redis
from safetensors.numpy import save_file

from dso.broker import AdapterIntegrityError, AdapterRegistry, AdapterStore, AdapterStoreError, Broker, KeySpace
from dso.broker import adapter_store as adapter_store_module
from dso.broker.adapter_store import sha256_file
from dso.config import BrokerSettings


def peft_folder(path: Path, seed: int) -> Path:
    """A real PEFT-format folder: adapter_config.json + adapter_model.safetensors."""
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["to_qkv"]}
    (path / "adapter_config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    save_file(
        {"base_model.model.blocks.0.attn.to_qkv.lora_A.weight": rng.standard_normal((4, 16)).astype(np.float32)},
        str(path / "adapter_model.safetensors"),
    )
    return path


def test_publish_versions_latest_and_manifest(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    assert store.latest() is None and store.versions() == [] and store.next_version() == 1
    m1 = store.publish(peft_folder(tmp_path / "a", 1), step=100, objective="dro", metrics={"loss": 0.5})
    m2 = store.publish(peft_folder(tmp_path / "b", 2), step=200, objective="dro")
    assert (m1.version, m2.version) == (1, 2)
    assert store.versions() == [1, 2] and store.latest() == 2
    assert not (tmp_path / "store" / "LATEST").exists()  # no pointer file: the registry is the fleet's pointer
    assert m1.parent_version is None and m2.parent_version == 1
    manifest = store.manifest(1)
    assert manifest == m1 and manifest.metrics == {"loss": 0.5} and manifest.step == 100
    assert manifest.sha256 == sha256_file(tmp_path / "a" / "adapter_model.safetensors")
    assert datetime.fromisoformat(manifest.created_at).utcoffset().total_seconds() == 0
    version, path = store.latest_path()
    assert version == 2 and path.name == "v000002"
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "manifest.json"]


def _crash_before_rename(root: str, source: str) -> None:
    """Child process: publish, but the process dies right before the directory rename."""

    def die(*_args: object) -> None:
        os._exit(17)

    adapter_store_module.os.rename = die  # type: ignore[assignment]
    AdapterStore(Path(root)).publish(Path(source), step=1, objective="dro")


def test_crash_between_temp_write_and_rename_keeps_the_old_version(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    store.publish(peft_folder(tmp_path / "a", 1), step=1, objective="dro")
    child = multiprocessing.get_context("fork").Process(
        target=_crash_before_rename, args=(str(store.root), str(peft_folder(tmp_path / "b", 2)))
    )
    child.start()
    child.join(30)
    assert child.exitcode == 17
    leftovers = [p for p in store.root.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "manifest.json").is_file()  # fully written, never renamed
    assert store.latest() == 1 and store.versions() == [1]
    assert store.latest_path()[0] == 1
    # the next publish is unaffected; stale temp dirs can be swept
    assert store.publish(peft_folder(tmp_path / "c", 3), step=2, objective="dro").version == 2
    assert store.clean_stale_temp(older_than_s=0) == leftovers


def test_dir_without_manifest_is_ignored_but_its_number_is_not_reused(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    store.publish(peft_folder(tmp_path / "a", 1), step=1, objective="dro")
    (store.root / "v000002").mkdir()  # e.g. copied by hand, half done
    assert store.versions() == [1] and store.latest() == 1
    with pytest.raises(AdapterStoreError, match="not published"):
        store.path(2)
    assert store.next_version() == 3


def test_sha_mismatch_is_detected(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    store.publish(peft_folder(tmp_path / "a", 1), step=1, objective="dro")
    weights = store.path(1) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterIntegrityError, match="sha256"):
        store.path(1)
    with pytest.raises(AdapterIntegrityError):
        store.latest_path()
    assert store.path(1, verify=False).name == "v000001"


def test_next_version_continues_after_reopening(tmp_path: Path) -> None:
    AdapterStore(tmp_path / "store").publish(peft_folder(tmp_path / "a", 1), step=1, objective="dro")
    AdapterStore(tmp_path / "store").publish(peft_folder(tmp_path / "b", 2), step=2, objective="dro")
    reopened = AdapterStore(tmp_path / "store")
    assert reopened.next_version() == 3 and reopened.latest() == 2


def test_source_must_be_a_peft_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterStoreError, match="missing adapter_config.json, adapter_model.safetensors"):
        AdapterStore(tmp_path / "store").publish(tmp_path / "empty", step=0, objective="dro")
    assert AdapterStore(tmp_path / "store").next_version() == 1


def test_publish_notifies_the_registry(tmp_path: Path, redis_client: redis.Redis, broker_settings: BrokerSettings) -> None:
    registry = AdapterRegistry(redis_client, KeySpace(broker_settings.key_prefix), broker_settings)
    store = AdapterStore(tmp_path / "store", notifier=registry)
    assert registry.latest() is None
    assert registry.wait_for_newer(0, timeout_s=0.05) is None
    pubsub = registry.subscribe()
    pubsub.get_message(timeout=0.2)
    m1 = store.publish(peft_folder(tmp_path / "a", 1), step=5, objective="dro", metrics={"loss": 1.0})
    assert registry.latest() == 1 and registry.versions() == [1]
    assert registry.manifest(1)["sha256"] == m1.sha256
    message = pubsub.get_message(timeout=2.0)
    assert message is not None and int(message["data"]) == 1
    pubsub.close()
    # a generator that missed the push still sees it, and a waiting one is woken up
    assert registry.wait_for_newer(0, timeout_s=0.05) == 1
    publisher = threading.Timer(0.2, lambda: store.publish(peft_folder(tmp_path / "b", 2), step=6, objective="dro"))
    publisher.start()
    assert registry.wait_for_newer(1, timeout_s=5.0) == 2
    publisher.join()
    # an older announcement never moves the latest pointer back
    assert registry.announce({"version": 1, "step": 5}) is False and registry.latest() == 2


def test_a_stale_latest_file_is_ignored_and_numbering_resumes_from_directories(tmp_path: Path) -> None:
    """Stores written before the registry became the one pointer may hold a LATEST file: nothing reads it."""
    store = AdapterStore(tmp_path / "store")
    store.publish(peft_folder(tmp_path / "a", 1), step=1, objective="dro")
    store.publish(peft_folder(tmp_path / "b", 2), step=2, objective="dro")
    (store.root / "LATEST").write_text("1\n")
    reopened = AdapterStore(tmp_path / "store")  # a restarted learner's view
    assert reopened.latest() == 2 and reopened.next_version() == 3
    assert reopened.publish(peft_folder(tmp_path / "c", 3), step=3, objective="dro").parent_version == 2


def test_opening_the_broker_announces_versions_the_registry_lacks(tmp_path: Path, broker_settings: BrokerSettings) -> None:
    """A publisher killed between its rename and its announcement, or a registry that lost its data: the
    files are the record of what exists, so the next broker to open tells the registry (the fleet's pointer)."""
    store = AdapterStore(broker_settings.resolved_adapter_store_dir)  # no notifier: never announced
    store.publish(peft_folder(tmp_path / "a", 1), step=1, objective="dro")
    m2 = store.publish(peft_folder(tmp_path / "b", 2), step=2, objective="dro")
    with Broker.open(broker_settings) as broker:
        assert broker.registry.versions() == [1, 2] and broker.registry.latest() == 2
        assert broker.registry.manifest(2)["sha256"] == m2.sha256
    with Broker.open(broker_settings) as broker:  # nothing left to announce: no second stream entry
        assert broker.registry.client.xlen(broker.registry.stream_key) == 2

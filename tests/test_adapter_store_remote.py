"""The adapter store on a filesystem URL: a real S3 API (moto's server on loopback) and file://.

Object storage has no atomic rename, so the manifest is the commit point: these tests check that a
version without one is ignored (but its number is not reused), that a corrupted object fails
verification, that readers' local cache is reused and refreshed, and that a PEFT adapter published
to S3 loads from the pulled folder, also through the HTTP API.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest_broker import S3_TEST_ENV, make_settings
from test_api_adapters import LORA, promote, tiny_base, trained_adapter
from test_broker_adapters import peft_folder

from dso.broker import AdapterIntegrityError, AdapterStore, AdapterStoreError, Broker
from dso.broker.adapter_store import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, sha256_file
from dso.models.lora import flow_model_probe

pytest.importorskip("moto.server", reason="moto[server] (a dev dependency) is not installed")  # s3_endpoint: conftest.py
boto3 = pytest.importorskip("boto3")

BUCKET = "dso-adapters"


@pytest.fixture()
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A boto3 client for the bucket; credentials from the standard AWS variables, as in production."""
    for name, value in S3_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    yield client


@pytest.fixture(params=["s3", "file"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store root: an S3 prefix of its own, or a file:// URL."""
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    request.getfixturevalue("s3")
    return f"s3://{BUCKET}/runs/{uuid.uuid4().hex[:8]}/adapters"


def open_store(url: str, request: pytest.FixtureRequest, cache: Path) -> AdapterStore:
    endpoint = request.getfixturevalue("s3_endpoint") if url.startswith("s3://") else None
    return AdapterStore(url, endpoint_override=endpoint, cache_dir=cache)


def _key(url: str, version: int, name: str) -> str:
    prefix = url.removeprefix(f"s3://{BUCKET}/")
    return f"{prefix}/v{version:06d}/{name}"


def test_publish_list_pull_verify_and_resume(store_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    store = open_store(store_url, request, tmp_path / "cache")
    assert store.versions() == [] and store.latest() is None and store.next_version() == 1 and store.latest_path() is None
    m1 = store.publish(peft_folder(tmp_path / "a", 1), step=10, objective="dro", metrics={"loss": 0.5})
    m2 = store.publish(peft_folder(tmp_path / "b", 2), step=20, objective="dro")
    assert (m1.version, m2.version, m2.parent_version) == (1, 2, 1)
    assert store.versions() == [1, 2] and store.latest() == 2 and store.manifest(1) == m1
    assert m1.sha256 == sha256_file(tmp_path / "a" / ADAPTER_WEIGHTS) and m1.size_bytes == (tmp_path / "a" / ADAPTER_WEIGHTS).stat().st_size
    store.verify(1)
    version, folder = store.latest_path()
    assert version == 2 and sorted(p.name for p in folder.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST]
    assert (folder / ADAPTER_WEIGHTS).read_bytes() == (tmp_path / "b" / ADAPTER_WEIGHTS).read_bytes()
    assert store.pull(1) == store.path(1)
    assert store.check() == "ok"
    # a restarted learner (a new process, a new store object) resumes the numbering from what is stored
    reopened = open_store(store_url, request, tmp_path / "cache2")
    assert reopened.latest() == 2 and reopened.next_version() == 3
    assert reopened.publish(peft_folder(tmp_path / "c", 3), step=30, objective="dro").parent_version == 2
    assert store.versions() == [1, 2, 3]
    assert store.remote == store_url.startswith("s3://") and store.url.rstrip("/").endswith("adapters" if store.remote else "store")


def test_a_torn_publish_is_ignored_and_its_number_not_reused(store_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A publisher that died after its weights but before its manifest (the commit point)."""
    store = open_store(store_url, request, tmp_path / "cache")
    store.publish(peft_folder(tmp_path / "a", 1), step=1, objective="dro")
    torn = peft_folder(tmp_path / "torn", 2)
    if store.remote:
        client = request.getfixturevalue("s3")
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            client.put_object(Bucket=BUCKET, Key=_key(store_url, 2, name), Body=(torn / name).read_bytes())
    else:
        directory = store.root / "v000002"
        directory.mkdir()
        (directory / ADAPTER_WEIGHTS).write_bytes((torn / ADAPTER_WEIGHTS).read_bytes())
    assert store.versions() == [1] and store.latest() == 1 and store.latest_path()[0] == 1
    with pytest.raises(AdapterStoreError, match="not published"):
        store.pull(2)
    assert store.next_version() == 3
    assert store.publish(peft_folder(tmp_path / "b", 3), step=2, objective="dro").version == 3
    assert store.versions() == [1, 3]


def test_a_corrupted_object_fails_verification(s3: object, s3_endpoint: str, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/corrupt/{uuid.uuid4().hex[:8]}"
    store = AdapterStore(url, endpoint_override=s3_endpoint, cache_dir=tmp_path / "cache")
    store.publish(peft_folder(tmp_path / "a", 1), step=1, objective="dro")
    key = _key(url, 1, ADAPTER_WEIGHTS)
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[-1] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    with pytest.raises(AdapterIntegrityError, match="sha256"):
        store.verify(1)
    with pytest.raises(AdapterIntegrityError, match="sha256"):
        store.pull(1)
    with pytest.raises(AdapterIntegrityError):
        store.latest_path()
    assert not any(tmp_path.joinpath("cache").rglob(ADAPTER_WEIGHTS))  # nothing corrupt was cached
    s3.delete_object(Bucket=BUCKET, Key=_key(url, 1, ADAPTER_CONFIG))
    with pytest.raises(AdapterIntegrityError, match="adapter_config.json missing"):
        store.verify(1)


def test_the_local_cache_is_reused_and_refetched_when_its_sha_differs(s3: object, s3_endpoint: str, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/cache/{uuid.uuid4().hex[:8]}"
    store = AdapterStore(url, endpoint_override=s3_endpoint, cache_dir=tmp_path / "cache")
    manifest = store.publish(peft_folder(tmp_path / "a", 1), step=1, objective="dro")
    first = store.pull(1)
    assert first.is_relative_to(tmp_path / "cache") and manifest.sha256[:16] in first.name
    inode = (first / ADAPTER_WEIGHTS).stat().st_ino
    assert store.pull(1) == first and (first / ADAPTER_WEIGHTS).stat().st_ino == inode  # reused, not downloaded again
    # another reader process on the node (a new store object) finds the same cached copy
    other = AdapterStore(url, endpoint_override=s3_endpoint, cache_dir=tmp_path / "cache")
    assert other.pull(1) == first and (first / ADAPTER_WEIGHTS).stat().st_ino == inode
    # a cached copy that no longer matches the manifest is dropped and fetched again
    (first / ADAPTER_WEIGHTS).write_bytes(b"not the weights")
    assert store.pull(1, verify=False) == first  # verify=False trusts the cache (it was checked on download)
    again = store.pull(1)
    assert again == first and sha256_file(again / ADAPTER_WEIGHTS) == manifest.sha256
    assert not [p for p in (tmp_path / "cache").rglob(".tmp-*")]
    assert store.clean_stale_temp(older_than_s=0) == []


def test_an_endpoint_is_for_s3_urls_only(tmp_path: Path) -> None:
    with pytest.raises(AdapterStoreError, match="s3:// URLs only"):
        AdapterStore("gs://bucket/adapters", endpoint_override="http://127.0.0.1:1")


def test_a_peft_adapter_round_trips_through_s3_and_the_api(s3: object, s3_endpoint: str, tmp_path: Path, valkey_server) -> None:
    """The run's settings name an s3:// store: the broker, PEFT and the HTTP API all work from pulled files."""
    from fastapi.testclient import TestClient
    from peft import PeftModel
    from prometheus_client import CollectorRegistry

    from dso.api.app import create_app
    from dso.config import ApiSettings, Settings
    from dso.telemetry import LoopMetrics

    settings = make_settings(
        tmp_path / "run", redis_url=valkey_server.url, adapter_store_dir=f"s3://{BUCKET}/api/{uuid.uuid4().hex[:8]}",
        adapter_store_endpoint=s3_endpoint, adapter_cache_dir=tmp_path / "cache",
    )
    source, expected = trained_adapter(tmp_path / "a1", 3)
    with Broker.open(settings) as broker:
        assert broker.adapters.remote and broker.adapters.url == settings.adapter_store_dir
        manifest = broker.adapters.publish(source, step=5, objective="dro")
        assert broker.registry.latest() == 1  # the notifier still announces
        pulled = broker.adapters.path(1)  # what the generator, canary and learner load
        loaded = PeftModel.from_pretrained(tiny_base(), str(pulled))
        assert torch.equal(flow_model_probe(loaded, LORA)(loaded), expected)
        assert not torch.equal(flow_model_probe(tiny_base(), LORA)(tiny_base()), expected)

        promote(broker, 1)
        app = create_app(Settings(broker=broker.settings, api=ApiSettings()), broker,
                         metrics=LoopMetrics(CollectorRegistry()), environ={"DSO_API_TOKEN": "t"})
        with TestClient(app) as client:
            assert client.get("/readyz").json()["checks"]["adapter_store"] == "ok"
            listing = client.get("/v1/adapters").json()
            assert [item["version"] for item in listing["items"]] == [1]
            weights = client.get("/v1/adapters/latest/files/adapter_model.safetensors")
            assert hashlib.sha256(weights.content).hexdigest() == manifest.sha256
            archive = client.get("/v1/adapters/1/archive")
            assert archive.status_code == 200
            with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
                tar.extractall(tmp_path / "downloaded", filter="data")
    from_archive = PeftModel.from_pretrained(tiny_base(), str(tmp_path / "downloaded"))
    assert torch.equal(flow_model_probe(from_archive, LORA)(from_archive), expected)
    with Broker.open(settings.model_copy(update={"key_prefix": f"t{uuid.uuid4().hex[:10]}"})) as fresh:
        assert fresh.registry.versions() == [1]  # a fresh registry is brought in line with the bucket's versions

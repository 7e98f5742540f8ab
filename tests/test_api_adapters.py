"""Adapter downloads over HTTP: manifests, strong ETags, 304, and archives that load in stock PEFT."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest_broker import make_settings
from fastapi.testclient import TestClient
from peft import PeftModel
from prometheus_client import CollectorRegistry

from dso.api.app import create_app
from dso.broker import Broker
from dso.broker.promotion import CanaryRecord, Decision
from dso.config import ApiSettings, FlowTransformerSettings, LoraSettings, Settings
from dso.models.lora import attach_lora, flow_model_probe, live_lora_parameters, save_adapter
from dso.models.transformer import SparseStructureFlowModel
from dso.telemetry import LoopMetrics

TINY_FLOW = FlowTransformerSettings(
    resolution=4, in_channels=2, out_channels=2, model_channels=32, cond_channels=16, num_blocks=2, num_heads=2
)
LORA = LoraSettings(r=4, alpha=8)


def tiny_base() -> SparseStructureFlowModel:
    """Every weight random (the DiT init zeroes the output layer, which would hide the adapter)."""
    torch.manual_seed(0)
    model = SparseStructureFlowModel.from_settings(TINY_FLOW)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


def trained_adapter(directory: Path, seed: int) -> tuple[Path, torch.Tensor]:
    """Save a LoRA adapter with random weights; returns its folder and the probe output it gives."""
    model = attach_lora(tiny_base(), LORA)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in live_lora_parameters(model).values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    save_adapter(model, directory)
    return directory, flow_model_probe(model, LORA)(model)


def promote(broker: Broker, version: int) -> None:
    """What the canary does when a candidate passes the gate: /v1/adapters/latest follows it."""
    assert broker.promotion.record(CanaryRecord(version=version, decision=Decision.promoted))


@pytest.fixture()
def broker(tmp_path: Path, valkey_server) -> Iterator[Broker]:
    with Broker.open(make_settings(tmp_path, redis_url=valkey_server.url)) as opened:
        yield opened


@pytest.fixture()
def client(broker: Broker) -> Iterator[TestClient]:
    app = create_app(
        Settings(broker=broker.settings, api=ApiSettings()), broker,
        metrics=LoopMetrics(CollectorRegistry()), environ={"DSO_API_TOKEN": "t"},
    )
    with TestClient(app) as test_client:
        yield test_client


def test_no_adapter_yet_is_a_clear_404(client: TestClient) -> None:
    assert client.get("/v1/adapters").json() == {"latest": None, "promoted": 0, "items": []}
    latest = client.get("/v1/adapters/latest")
    assert latest.status_code == 404 and "no adapter has been published" in latest.json()["detail"]
    assert client.get("/v1/adapters/7").status_code == 404
    assert client.get("/v1/adapters/0").status_code == 422  # version 0 is the base model: nothing to download


def test_versions_list_with_manifests_and_file_hashes(client: TestClient, broker: Broker, tmp_path: Path) -> None:
    broker.adapters.publish(trained_adapter(tmp_path / "a1", 1)[0], step=10, objective="dro", metrics={"loss": 0.5})
    broker.adapters.publish(trained_adapter(tmp_path / "a2", 2)[0], step=20, objective="dro")
    promote(broker, 2)
    listing = client.get("/v1/adapters").json()
    assert listing["latest"] == 2 and [a["version"] for a in listing["items"]] == [1, 2]
    first = listing["items"][0]
    assert first["latest"] is False and first["manifest"]["step"] == 10 and first["manifest"]["metrics"] == {"loss": 0.5}
    weights = next(f for f in first["files"] if f["name"] == "adapter_model.safetensors")
    on_disk = broker.adapters.path(1) / "adapter_model.safetensors"
    assert weights["sha256"] == hashlib.sha256(on_disk.read_bytes()).hexdigest() == first["manifest"]["sha256"]
    assert client.get("/v1/adapters/latest").json()["version"] == 2


def test_file_download_has_a_strong_etag_and_304(client: TestClient, broker: Broker, tmp_path: Path) -> None:
    broker.adapters.publish(trained_adapter(tmp_path / "a1", 1)[0], step=1, objective="dro")
    promote(broker, 1)
    url = "/v1/adapters/1/files/adapter_model.safetensors"
    response = client.get(url)
    digest = hashlib.sha256(response.content).hexdigest()
    assert response.status_code == 200 and response.headers["etag"] == f'"{digest}"'
    assert digest == broker.adapters.manifest(1).sha256
    assert client.get(url, headers={"If-None-Match": f'"{digest}"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": f'W/"{digest}", "other"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200
    config = client.get("/v1/adapters/latest/files/adapter_config.json")
    assert config.status_code == 200 and config.json()["r"] == LORA.r
    assert config.headers["etag"] == f'"{hashlib.sha256(config.content).hexdigest()}"'
    assert client.get("/v1/adapters/1/files/secrets.txt").status_code == 422


def test_archive_round_trips_into_stock_peft(client: TestClient, broker: Broker, tmp_path: Path) -> None:
    source, expected = trained_adapter(tmp_path / "a1", 3)
    broker.adapters.publish(source, step=5, objective="dro")
    promote(broker, 1)
    response = client.get("/v1/adapters/latest/archive")
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
    etag = response.headers["etag"]
    assert etag == f'"{hashlib.sha256(response.content).hexdigest()}"'
    again = client.get("/v1/adapters/1/archive")
    assert again.content == response.content and again.headers["etag"] == etag  # deterministic bytes
    assert client.get("/v1/adapters/1/archive", headers={"If-None-Match": etag}).status_code == 304

    target = tmp_path / "downloaded"
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        assert sorted(tar.getnames()) == ["adapter_config.json", "adapter_model.safetensors", "manifest.json"]
        tar.extractall(target, filter="data")
    loaded = PeftModel.from_pretrained(tiny_base(), str(target))
    base_output = flow_model_probe(tiny_base(), LORA)(tiny_base())
    assert not torch.equal(expected, base_output)  # the adapter changes the model ...
    assert torch.equal(flow_model_probe(loaded, LORA)(loaded), expected)  # ... and the download reproduces it


def test_corrupted_adapter_is_refused_not_served(client: TestClient, broker: Broker, tmp_path: Path) -> None:
    broker.adapters.publish(trained_adapter(tmp_path / "a1", 4)[0], step=1, objective="dro")
    weights = broker.adapters.root / "v000001" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    response = client.get("/v1/adapters/1/archive")
    assert response.status_code == 500 and "integrity" in response.json()["detail"]

"""Bearer-token auth: missing / wrong / right, env and mounted file, optional auth on reads, no token leaks."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_broker import make_settings
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import CollectorRegistry

from dso.api.app import create_app
from dso.broker import Broker
from dso.config import ApiSettings, Settings
from dso.telemetry import LoopMetrics

TOKEN = "tok-0123456789"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (16, 16), (200, 10, 10, 255)).save(buffer, format="PNG")  # api.min_image_side
    return buffer.getvalue()


@pytest.fixture()
def broker(tmp_path: Path, valkey_server) -> Iterator[Broker]:
    with Broker.open(make_settings(tmp_path, redis_url=valkey_server.url)) as opened:
        yield opened


def make_client(broker: Broker, environ: dict[str, str], **api: object) -> TestClient:
    app = create_app(
        Settings(broker=broker.settings, api=ApiSettings(**api)), broker,
        metrics=LoopMetrics(CollectorRegistry()), environ=environ,
    )
    return TestClient(app)


def post(client: TestClient, headers: dict[str, str]):
    return client.post("/v1/prompts", files=[("images", ("a.png", png(), "image/png"))], headers=headers)


def test_writes_need_the_right_token(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with make_client(broker, {"DSO_API_TOKEN": f"other-token, {TOKEN}"}) as client:
        missing = post(client, {})
        assert missing.status_code == 401 and "missing bearer token" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == 'Bearer realm="dso"'
        wrong = post(client, {"Authorization": "Bearer not-it"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"].endswith('error="invalid_token"')
        malformed = post(client, {"Authorization": f"Basic {TOKEN}"})
        assert malformed.status_code == 401 and "Bearer <token>" in malformed.json()["detail"]
        assert broker.prompts.all() == []  # nothing stored by refused requests
        right = post(client, {"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 201
        assert post(client, {"Authorization": "Bearer other-token"}).status_code == 200  # second token works too
        assert client.get("/v1/prompts").status_code == 200  # reads are open by default
    assert TOKEN not in caplog.text and "not-it" not in caplog.text


def test_token_from_a_mounted_secret_file_is_reread_on_rotation(broker: Broker, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(f"# api token\n{TOKEN}\n")
    with make_client(broker, {}, token_file=secret) as client:
        assert post(client, {"Authorization": f"Bearer {TOKEN}"}).status_code == 201
        secret.write_text("rotated-token-value\n")
        assert post(client, {"Authorization": f"Bearer {TOKEN}"}).status_code == 401
        assert client.delete(f"/v1/prompts/{broker.prompts.all()[0]}", headers={"Authorization": "Bearer rotated-token-value"}).status_code == 200


def test_no_token_configured_refuses_writes_with_a_hint(broker: Broker) -> None:
    with make_client(broker, {}) as client:
        response = post(client, {"Authorization": "Bearer anything"})
        assert response.status_code == 401 and "DSO_API_TOKEN" in response.json()["detail"]
    with make_client(broker, {}, allow_unauthenticated_writes=True) as client:
        assert post(client, {}).status_code == 201


def test_reads_can_require_auth_but_probes_stay_open(broker: Broker) -> None:
    with make_client(broker, {"DSO_API_TOKEN": TOKEN}, require_auth_for_reads=True) as client:
        for path in ("/v1/prompts", "/v1/adapters", "/v1/stats", "/v1/metrics/targets"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200, path

"""Shared test set-up: torch small and deterministic on a 2-core CI machine; the broker fixtures; a local S3 API."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import socket  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402
from conftest_broker import make_settings  # noqa: E402

from dso.broker.server import EmbeddedValkey, make_client  # noqa: E402
from dso.config import BrokerSettings  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey-session")) as server:
        yield server


@pytest.fixture()
def redis_client(valkey_server: EmbeddedValkey) -> Iterator[redis.Redis]:
    client = make_client(valkey_server.url)
    yield client
    client.close()


@pytest.fixture()
def broker_settings(tmp_path: Path, valkey_server: EmbeddedValkey) -> BrokerSettings:
    return make_settings(tmp_path, redis_url=valkey_server.url)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 API server on 127.0.0.1 (a real HTTP endpoint, nothing leaves the machine); skips without moto[server].

    Clients authenticate with ``conftest_broker.S3_TEST_ENV`` (any credentials work; set them in the environment).
    """
    moto_server = pytest.importorskip("moto.server", reason="moto[server] (a dev dependency) is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()

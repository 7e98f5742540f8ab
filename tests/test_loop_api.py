"""The API inside ``dso run``: session token, busy port, readiness from component checks (no Ray needed)."""

from __future__ import annotations

import socket

import httpx
import pytest
import ray
from rich.console import Console
from typer.testing import CliRunner

from conftest_broker import make_settings
from dso.api.server import PortInUseError
from dso.broker.broker import Broker
from dso.broker.server import read_server_info
from dso.cli import app
from dso.config import Settings, load_settings
from dso.jobs.loop_api import session_token, start_loop_api
from dso.jobs.session import run_loop


@pytest.fixture()
def squatter():
    """A port held by another process's listening socket."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        yield held.getsockname()[1]


def test_a_session_without_a_token_gets_a_random_one(monkeypatch):
    settings = load_settings("tiny", environ={})
    made = session_token(settings, environ={})
    assert made.generated and len(made.generated) >= 32 and made.environ["DSO_API_TOKEN"] == made.generated
    assert session_token(settings, environ={}).generated != made.generated, "a new token per session"
    assert session_token(settings, environ={"DSO_API_TOKEN": "mine"}).generated is None
    settings.api.allow_unauthenticated_writes = True
    assert session_token(settings, environ={}).generated is None


def test_loop_api_needs_the_session_token_and_reports_components(tmp_path, valkey_server):
    settings = Settings(broker=make_settings(tmp_path, redis_url=valkey_server.url))
    settings.api.port = 0
    alive = {"generator": False}
    console = Console(record=True, width=200)
    with Broker.open(settings.broker) as broker:
        api = start_loop_api(settings, broker, {"generator": lambda: alive["generator"]}, console, environ={})
        try:
            token = api.token.generated
            assert token in console.export_text(), "the generated token is shown once on the console"
            image = {"images": ("x.png", b"not checked before auth", "image/png")}
            assert httpx.post(f"{api.url}/v1/prompts", files=image, timeout=10).status_code == 401
            authorised = httpx.post(f"{api.url}/v1/prompts", files=image, timeout=10,
                                    headers={"Authorization": f"Bearer {token}"})
            assert authorised.status_code not in (401, 403), authorised.text  # past auth (the bytes are no image)
            not_ready = httpx.get(f"{api.url}/readyz", timeout=10)
            assert not_ready.status_code == 503 and not_ready.json()["checks"]["generator"] == "not alive"
            alive["generator"] = True
            assert httpx.get(f"{api.url}/readyz", timeout=10).status_code == 200
            assert set(api.endpoints()) >= {"api", "metrics", "scrape_targets"}
        finally:
            api.stop()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{api.url}/healthz", timeout=2)


def test_busy_api_port_fails_fast_with_a_clear_message(tmp_path, squatter, monkeypatch):
    settings = load_settings("tiny", environ={})
    settings.broker.run_dir = tmp_path / "run"
    settings.api.port = squatter
    with pytest.raises(PortInUseError, match=f"127.0.0.1:{squatter}.*DSO__API__PORT"):
        run_loop(settings, console=Console(width=200))
    assert not ray.is_initialized(), "nothing was started past the API"
    assert read_server_info(settings.broker.embedded_data_dir) is None, "the embedded Valkey was stopped again"
    # the command line says the same, with exit code 2
    monkeypatch.setenv("DSO__BROKER__RUN_DIR", str(tmp_path / "cli-run"))
    monkeypatch.setenv("DSO__API__PORT", str(squatter))
    result = CliRunner().invoke(app, ["run", "--duration", "5"])
    assert result.exit_code == 2, result.output
    assert "DSO__API__PORT" in result.output and str(squatter) in result.output

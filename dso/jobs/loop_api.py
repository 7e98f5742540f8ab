"""The HTTP API inside a loop session (``dso run``): started before the actors, stopped after them.

The API shares the session's broker and reports the actors' liveness in
``/readyz`` (a Ray ping per actor), so it is not ready until every role is up.
Writes need a bearer token: when the token variable (``api.token_env``,
``DSO_API_TOKEN``) is unset, the session makes a random one and prints it once
on the console, nowhere else (not in logs, not in summary.json). That is safer
than ``api.allow_unauthenticated_writes``, which opens writes to anything that
reaches the port.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from rich.console import Console

from dso.broker.broker import Broker
from dso.config import Settings


@dataclass
class SessionToken:
    """The environment the API reads its token from, and the token if this session made it."""

    environ: Mapping[str, str]
    generated: str | None  # None: the operator configured a token (env or api.token_file)


def session_token(settings: Settings, environ: Mapping[str, str] | None = None) -> SessionToken:
    """Use the configured token(s); if there are none, make a random one for this session."""
    env = dict(os.environ if environ is None else environ)
    api = settings.api
    configured = env.get(api.token_env, "").strip() or api.token_file is not None
    if configured or api.allow_unauthenticated_writes:
        return SessionToken(env, None)
    token = secrets.token_urlsafe(settings.loop.api_token_bytes)
    env[api.token_env] = token
    return SessionToken(env, token)


@dataclass
class LoopApi:
    """A running API server of one session."""

    server: object  # dso.api.server.ApiServer
    token: SessionToken

    @property
    def url(self) -> str:
        return self.server.url  # type: ignore[attr-defined]

    def endpoints(self) -> dict[str, str]:
        return {
            "api": self.url,
            "docs": f"{self.url}/docs",
            "metrics": f"{self.url}/metrics",
            "scrape_targets": f"{self.url}/v1/metrics/targets",
            "stats": f"{self.url}/v1/stats",
        }

    def stop(self) -> None:
        self.server.stop()  # type: ignore[attr-defined]


def start_loop_api(
    settings: Settings,
    broker: Broker,
    component_checks: Mapping[str, Callable[[], bool]],
    console: Console,
    environ: Mapping[str, str] | None = None,
) -> LoopApi:
    """Serve the API on ``api.host:api.port``; a busy port raises ``PortInUseError`` saying what to change."""
    from dso.api.app import create_app
    from dso.api.server import ApiServer

    token = session_token(settings, environ)
    app = create_app(settings, broker, component_checks=component_checks, environ=token.environ)
    server = ApiServer(app, host=settings.api.host, port=settings.api.port).start()
    api = LoopApi(server, token)
    console.print(f"API: {api.url}  (docs {api.url}/docs, metrics {api.url}/metrics, targets {api.url}/v1/metrics/targets)")
    if token.generated is not None:
        console.print(
            f"API write token for this session: {token.generated}\n"
            f"  (set {settings.api.token_env} to choose your own; e.g. "
            f"curl -H 'Authorization: Bearer <token>' -F images=@chair.png {api.url}/v1/prompts)"
        )
    return api

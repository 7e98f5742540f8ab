"""What every route depends on: the per-app context (broker, settings, caches) and the auth guards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from dso.api.archive import ArchiveCache
from dso.api.auth import TokenSource, check_bearer
from dso.broker.prompt_stats import PromptStats
from dso.broker import Broker
from dso.config import ApiSettings
from dso.telemetry import LoopMetrics, MetricsTargets

# documents the scheme in OpenAPI; the check itself is check_bearer (our messages, constant-time compare)
bearer_scheme = HTTPBearer(auto_error=False, description="Token from DSO_API_TOKEN or the mounted token file")


@dataclass
class ApiContext:
    """Everything the routes of one app share; lives in ``app.state.ctx``."""

    settings: ApiSettings
    broker: Broker
    tokens: TokenSource
    metrics: LoopMetrics
    prompt_stats: PromptStats
    targets: MetricsTargets
    archives: ArchiveCache
    app_registry: CollectorRegistry  # this app's own collectors (the broker's state)
    component_checks: dict[str, Callable[[], bool]] = field(default_factory=dict)
    verified_adapters: set[tuple[int, str]] = field(default_factory=set)


def get_context(request: Request) -> ApiContext:
    return request.app.state.ctx


def require_write(
    request: Request, _credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)
) -> None:
    """Endpoints that change state need a valid bearer token."""
    ctx = get_context(request)
    check_bearer(request, ctx.tokens, allow_when_unconfigured=ctx.settings.allow_unauthenticated_writes)


def require_read(request: Request) -> None:
    """Data reads need a token only when ``api.require_auth_for_reads`` is on.

    (No ``bearer_scheme`` dependency here: create_app marks reads as secured in the
    OpenAPI document only when the setting is on, so the document matches the server.)
    """
    ctx = get_context(request)
    if ctx.settings.require_auth_for_reads:
        check_bearer(request, ctx.tokens, allow_when_unconfigured=False)

"""The FastAPI application: ``create_app(settings, broker)`` wires routes, auth, errors and metrics.

The broker is injected (``Broker.open(settings.broker)`` by default), so tests and
``dso run`` hand in the one they already hold; the app never closes a broker it
was given, and closes one it opened itself on shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry

from dso import telemetry
from dso.api import routes_adapters, routes_console, routes_ops, routes_prompts, routes_samples
from dso.api.archive import ArchiveCache
from dso.api.auth import TokenSource
from dso.api.deps import ApiContext
from dso.api.errors import install_error_handlers
from dso.api.http_metrics import HttpMetricsMiddleware
from dso.broker.prompt_stats import PromptStats
from dso.api.uploads import IMAGES_FIELD
from dso.broker import Broker
from dso.config import Settings

API_VERSION = "1"
DESCRIPTION = """\
Push prompt images to the DSO loop, download its LoRA adapters and watch its stability rate.

* **Writes** (`POST`/`DELETE`) need `Authorization: Bearer <token>`; the token comes from the
  `DSO_API_TOKEN` environment variable or `api.token_file` on the server. Reads are open unless
  `api.require_auth_for_reads` is set. `/healthz`, `/readyz` and `/metrics` are always open.
* Every error is `{"detail": "<what was wrong>"}`.
* Downloads carry a strong `ETag` (the sha256 of the bytes); send it back in `If-None-Match` to get `304`.
"""


def create_app(
    settings: Settings,
    broker: Broker | None = None,
    *,
    metrics: telemetry.LoopMetrics | None = None,
    component_checks: Mapping[str, Callable[[], bool]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """Build the API over ``broker`` (opened from ``settings.broker`` when None).

    ``metrics``: the metric families to record into (default: the process-wide
    ``telemetry.METRICS``). ``component_checks``: name -> callable returning True while
    that loop component is alive (``dso run`` passes its actors); they feed ``/readyz``.
    ``environ``: where the token variable is read (default ``os.environ``).
    """
    api = settings.api
    owns_broker = broker is None
    active_broker = broker if broker is not None else Broker.open(settings.broker)
    metrics = metrics if metrics is not None else telemetry.METRICS
    app_registry = CollectorRegistry(auto_describe=False)
    app_registry.register(telemetry.BrokerCollector(active_broker, recent_versions=api.metrics_recent_versions))
    ctx = ApiContext(
        settings=api,
        broker=active_broker,
        tokens=TokenSource(api, environ),
        metrics=metrics,
        prompt_stats=PromptStats.for_broker(active_broker),
        targets=telemetry.MetricsTargets(active_broker.targets, api.target_ttl_s),
        archives=ArchiveCache(api.archive_cache_entries),
        app_registry=app_registry,
        component_checks=dict(component_checks or {}),
    )
    metrics.set_adapter_version("api", active_broker.promotion.promoted())  # what /v1/adapters/latest serves

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_broker:
            active_broker.close()

    app = FastAPI(
        title="DSO API",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "prompts", "description": "Prompt images the generators sample from"},
            {"name": "adapters", "description": "Published LoRA adapter versions (PEFT format), their canary scores "
                                                "and which one is promoted"},
            {"name": "operations", "description": "Statistics, health and metrics"},
            {"name": "samples", "description": "Recent labelled samples, their meshes and previews (the console)"},
        ],
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    for module in (routes_prompts, routes_adapters, routes_ops, routes_console):
        app.include_router(module.router)
    routes_samples.attach(app, settings)  # the console's reads (page sizes from settings.console)
    routes_console.attach(app)  # the web console's static files under /console; the page itself is /
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    app.openapi = _openapi_with_limits(app, settings)  # type: ignore[method-assign]
    return app


def _openapi_with_limits(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """The generated document, plus the upload limits taken from the settings."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            body = schema["paths"]["/v1/prompts"]["post"]["requestBody"]["content"]["multipart/form-data"]
            images = body["schema"]["properties"][IMAGES_FIELD]
            images["maxItems"] = settings.api.max_files_per_request
            images["description"] += (
                f"; at most {settings.api.max_upload_bytes} bytes and {settings.api.max_image_pixels} pixels each"
                f", at least {settings.api.min_image_side} pixels a side"
            )
            for parameter in schema["paths"]["/v1/prompts"]["get"]["parameters"]:
                if parameter["name"] == "limit":
                    for branch in parameter["schema"].get("anyOf", [parameter["schema"]]):
                        if branch.get("type") == "integer":
                            branch["maximum"] = settings.api.max_page_size
            if settings.api.require_auth_for_reads:
                for path, operations in schema["paths"].items():
                    if path.startswith("/v1/") and "get" in operations:
                        operations["get"]["security"] = [{"HTTPBearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    return build

"""Operations endpoints: live statistics, liveness, readiness, Prometheus metrics and scrape targets."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from dso.api.deps import ApiContext, get_context, require_read
from dso.api.schemas import (
    DecisionCounts,
    Health,
    Readiness,
    ScrapeTargetGroup,
    StatsResponse,
    Throughput,
    error_responses,
)
from dso.telemetry import BrokerCollector

router = APIRouter(tags=["operations"])


def _stats(ctx: ApiContext) -> StatsResponse:
    broker = ctx.broker
    snapshot = broker.stats.snapshot()
    window = snapshot["window"]
    dead = broker.samples.dead_letter_count()
    return StatsResponse(
        time=snapshot["time"],
        current_version=snapshot["current_version"],
        totals=snapshot["totals"],
        window=window,
        by_version={str(v): counts for v, counts in snapshot["by_version"].items()},
        throughput=Throughput(generated_per_s=window["generated_per_s"], labelled_per_s=window["labelled_per_s"]),
        learner=snapshot["learner"],
        queues=snapshot["queues"],
        dead_letters=dead,
        prompts_active=len(broker.prompts.active()),
        promoted_version=broker.promotion.promoted(),
        decisions=DecisionCounts(**broker.promotion.counts()),
    )


@router.get(
    "/v1/stats",
    response_model=StatsResponse,
    summary="Live stability rate (window, total, per adapter version), throughput, queues, learner, staleness, "
    "promoted version and canary decisions",
    responses=error_responses(401, 503),
    dependencies=[Depends(require_read)],
)
def get_stats(ctx: ApiContext = Depends(get_context)) -> StatsResponse:
    return _stats(ctx)


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


async def _check_redis(ctx: ApiContext) -> str:
    try:
        await asyncio.wait_for(
            run_in_threadpool(ctx.broker.ping), timeout=ctx.settings.readiness_timeout_s
        )
    except TimeoutError:
        return f"no answer from Redis within {ctx.settings.readiness_timeout_s} s"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"Redis unreachable: {type(exc).__name__}"
    return "ok"


def _check_adapter_store(ctx: ApiContext) -> str:
    return ctx.broker.adapters.check()  # a directory listing, or one LIST on object storage


def _check_component(check: Any) -> str:
    try:
        return "ok" if check() else "not alive"
    except Exception as exc:  # noqa: BLE001
        return f"check failed: {type(exc).__name__}: {exc}"


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: Redis reachable, adapter store readable, loop components alive (503 otherwise)",
    responses={503: {"model": Readiness, "description": "Not ready; checks say what is wrong"}},
)
async def readyz(ctx: ApiContext = Depends(get_context)) -> JSONResponse:
    checks = {"redis": await _check_redis(ctx), "adapter_store": await run_in_threadpool(_check_adapter_store, ctx)}
    for name, check in ctx.component_checks.items():
        checks[name] = await run_in_threadpool(_check_component, check)
    if ctx.settings.ready_requires and checks["redis"] == "ok":
        live = {component for component, _address in await run_in_threadpool(ctx.targets.live)}
        for component in ctx.settings.ready_requires:
            checks[f"{component}_announced"] = "ok" if component in live else f"no live {component} has announced itself"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(Readiness(ready=ready, checks=checks).model_dump(), status_code=200 if ready else 503)


class _Merged:
    """The process's registry plus this app's own (the broker collector), read as one.

    Families the broker collector replaces (``BrokerCollector.REPLACES``) are dropped from the
    process's registry, so each name appears once and carries the broker's value.
    """

    def __init__(self, process: Any, app: Any) -> None:
        self.process = process
        self.app = app

    def collect(self) -> Any:
        for family in self.process.collect():
            if family.name not in BrokerCollector.REPLACES:
                yield family
        yield from self.app.collect()


@router.get(
    "/metrics",
    summary="Prometheus exposition of this process and of the broker",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                     "description": "Prometheus text format 0.0.4"}},
)
async def metrics(ctx: ApiContext = Depends(get_context)) -> Response:
    process = REGISTRY if ctx.metrics.registry is None else ctx.metrics.registry
    body = await run_in_threadpool(generate_latest, _Merged(process, ctx.app_registry))  # type: ignore[arg-type]
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/metrics/targets",
    response_model=list[ScrapeTargetGroup],
    summary="Prometheus HTTP service discovery: the /metrics endpoint of every live loop process",
    responses=error_responses(401, 503),
    dependencies=[Depends(require_read)],
)
def metrics_targets(ctx: ApiContext = Depends(get_context)) -> list[ScrapeTargetGroup]:
    return [ScrapeTargetGroup(**group) for group in ctx.targets.http_sd()]

"""One error shape for every failure: ``{"detail": "<what was wrong>"}`` with the right status."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dso.broker.errors import BrokerError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status and a message meant for the client."""

    def __init__(self, status_code: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = dict(headers or {})


def _location(error: Mapping[str, Any]) -> str:
    return ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "request"


def install_error_handlers(app: FastAPI) -> None:
    """Map ApiError, validation errors and Redis outages to JSON responses."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        detail = "; ".join(f"{_location(e)}: {e.get('msg', 'invalid')}" for e in errors) or "invalid request"
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(BrokerError)
    async def _broker_down(_request: Request, exc: BrokerError) -> JSONResponse:
        log.warning("broker unavailable: %s", exc)
        return JSONResponse({"detail": f"broker (Redis) unavailable: {type(exc).__name__}"}, status_code=503)

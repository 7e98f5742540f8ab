"""Bearer-token auth: tokens from an environment variable and/or a mounted secret file.

Writes always need a token; reads need one when ``require_auth_for_reads``. Tokens
are compared in constant time and never logged or echoed. The secret file is
re-read when it changes, so a rotated Kubernetes secret takes effect without a
restart. With no token configured, writes are refused (401, saying how to set
one) unless ``allow_unauthenticated_writes`` is on (local development).
"""

from __future__ import annotations

import hmac
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from fastapi import Request

from dso.api.errors import ApiError
from dso.config import ApiSettings

REALM = "dso"


class TokenSource:
    """The set of accepted tokens, from ``env[token_env]`` (comma-separated) and ``token_file`` (one per line)."""

    def __init__(self, settings: ApiSettings, environ: Mapping[str, str] | None = None) -> None:
        self.env_name = settings.token_env
        self.token_file = settings.token_file
        self._environ = environ
        self._lock = threading.Lock()
        self._file_stamp: tuple[float, int] | None = None
        self._file_tokens: frozenset[str] = frozenset()

    def tokens(self) -> frozenset[str]:
        environ = os.environ if self._environ is None else self._environ
        from_env = {t.strip() for t in environ.get(self.env_name, "").split(",") if t.strip()}
        return frozenset(from_env) | self._read_file()

    def _read_file(self) -> frozenset[str]:
        if self.token_file is None:
            return frozenset()
        path = Path(self.token_file)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return frozenset()
        stamp = (stat.st_mtime, stat.st_size)
        with self._lock:
            if stamp != self._file_stamp:
                lines = path.read_text().splitlines()
                self._file_tokens = frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))
                self._file_stamp = stamp
            return self._file_tokens

    def accepts(self, presented: str) -> bool:
        # compare against every token (no early exit) so timing does not reveal which one matched
        matched = False
        for token in self.tokens():
            matched |= hmac.compare_digest(presented.encode(), token.encode())
        return matched


def _challenge(error: str | None = None) -> dict[str, str]:
    value = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    return {"WWW-Authenticate": value}


def check_bearer(request: Request, source: TokenSource, allow_when_unconfigured: bool) -> None:
    """Raise a 401 ApiError unless the request carries an accepted bearer token."""
    tokens = source.tokens()
    if not tokens:
        if allow_when_unconfigured:
            return
        raise ApiError(
            401,
            f"this endpoint needs a bearer token, and the server has none configured: set {source.env_name} "
            "(or api.token_file) on the server",
            _challenge(),
        )
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'", _challenge())
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(401, "malformed Authorization header: expected 'Bearer <token>'", _challenge("invalid_request"))
    if not source.accepts(presented.strip()):
        raise ApiError(401, "invalid bearer token", _challenge("invalid_token"))

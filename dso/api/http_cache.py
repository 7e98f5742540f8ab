"""Strong ETags and If-None-Match: content hashes as validators, 304 when the client is current."""

from __future__ import annotations

from fastapi import Response


def quoted(digest: str) -> str:
    """A strong ETag from a content hash: the quoted hex digest."""
    return f'"{digest}"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: weak comparison, a list of tags or ``*``."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


def not_modified(etag: str, cache_control: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache_control})


def cache_control(private: bool, immutable: bool) -> str:
    """Content addressed by hash never changes; keep it out of shared caches when reads need auth."""
    scope = "private" if private else "public"
    return f"{scope}, max-age=31536000, immutable" if immutable else f"{scope}, no-cache"

"""Adapter archives: one deterministic ``.tar`` per version, cached, with a strong ETag.

Versions are immutable, so an archive is built once (the same files always give
the same bytes: fixed order, mtime, owner and mode) and its sha256 is its ETag.
Uncompressed: safetensors weights are random-looking floats that gzip cannot shrink.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ARCHIVE_MEMBERS = ("adapter_config.json", "adapter_model.safetensors", "manifest.json")


@dataclass(frozen=True)
class AdapterArchive:
    version: int
    data: bytes
    sha256: str

    @property
    def filename(self) -> str:
        return f"dso-adapter-v{self.version:06d}.tar"


def build_archive(version: int, directory: Path, created_at: str) -> AdapterArchive:
    """Tar the PEFT files and the manifest of one version at the archive's top level."""
    mtime = int(datetime.fromisoformat(created_at).timestamp())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ARCHIVE_MEMBERS:
            data = (directory / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return AdapterArchive(version, data, hashlib.sha256(data).hexdigest())


class ArchiveCache:
    """The most recently used archives, keyed by (version, weights sha256)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, str], AdapterArchive] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: int, weights_sha256: str, directory: Path, created_at: str) -> AdapterArchive:
        key = (version, weights_sha256)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        archive = build_archive(version, directory, created_at)
        with self._lock:
            if self.max_entries > 0:
                self._entries[key] = archive
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return archive

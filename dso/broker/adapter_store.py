"""Adapter store: versioned PEFT adapters on local or shared storage, published atomically.

Layout of the store root::

    v000001/  adapter_config.json  adapter_model.safetensors  manifest.json
    v000002/  ...
    .tmp-v000003-<random>/         a publish in progress (or one that crashed): ignored

Publishing writes everything into a temp dir inside the root, fsyncs, renames it to
its final name in one ``os.rename`` (the commit point), then notifies the registry. A
reader therefore sees either the old version or the complete new one, never half a
directory. Readers verify the safetensors sha256 against the manifest; a version dir
without a manifest is ignored.

One source of truth for "the latest adapter": the store holds the *files*; which
version the fleet knows about is the Redis registry's (``broker.registry.latest()``,
moved by every publish through the notifier), and which version generators serve is
the promotion store's (``broker.promotion.promoted()``). The store keeps no pointer
file of its own (the ``LATEST`` file of earlier versions is gone; one left in an old
store is ignored): ``latest()`` here is only the newest complete directory, which a
restarted learner uses to resume its numbering, and ``next_version()`` counts past
every directory present, so numbers never repeat across restarts.

Version 0 means "the base model, no adapter"; the first published version is 1.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST = "manifest.json"
LOCK = ".publish.lock"
TMP_PREFIX = ".tmp-"
REQUIRED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_HASH_CHUNK = 1 << 20


class AdapterStoreError(RuntimeError):
    """Publishing or resolving an adapter failed."""


class AdapterIntegrityError(AdapterStoreError):
    """An adapter's files do not match its manifest (corruption or a tampered file)."""


class AdapterManifest(BaseModel):
    """What a published adapter is and where it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    step: int = Field(ge=0)
    sha256: str  # of adapter_model.safetensors
    created_at: str  # UTC, ISO 8601
    objective: str
    metrics: dict[str, float] = Field(default_factory=dict)
    parent_version: int | None = None
    size_bytes: int = 0  # of adapter_model.safetensors


class AdapterNotifier(Protocol):
    """Anything told about a new version after it is durable (the Redis registry)."""

    def announce(self, manifest: AdapterManifest) -> Any: ...


def version_dirname(version: int) -> str:
    return f"v{version:06d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AdapterStore:
    """Versioned adapter directories under one root, each published atomically."""

    def __init__(self, root: Path, notifier: AdapterNotifier | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.notifier = notifier

    # --- reading ----------------------------------------------------------------

    def versions(self) -> list[int]:
        """Complete versions (dirs with a manifest), ascending."""
        return [v for v in self._version_dirs() if (self.root / version_dirname(v) / MANIFEST).is_file()]

    def latest(self) -> int | None:
        """The newest complete version on disk, or None before the first publish.

        What this store holds, not what the fleet is told: readers that serve or score
        adapters ask ``broker.registry.latest()`` (published) or ``broker.promotion.promoted()``.
        """
        versions = self.versions()
        return versions[-1] if versions else None

    def next_version(self) -> int:
        """One past every version dir present (complete or not), so numbers never repeat."""
        return max([0, *self._version_dirs()]) + 1

    def manifest(self, version: int) -> AdapterManifest:
        path = self.root / version_dirname(version) / MANIFEST
        try:
            return AdapterManifest.model_validate_json(path.read_text())
        except FileNotFoundError as exc:
            raise AdapterStoreError(f"adapter version {version} is not published in {self.root}") from exc

    def path(self, version: int, verify: bool = True) -> Path:
        """Directory of a published version (PEFT ``from_pretrained`` loads it), checked against its manifest."""
        manifest = self.manifest(version)
        directory = self.root / version_dirname(version)
        if verify:
            self.verify(version, manifest)
        return directory

    def latest_path(self, verify: bool = True) -> tuple[int, Path] | None:
        """``(version, directory)`` of the latest adapter, or None before the first publish."""
        version = self.latest()
        if version is None:
            return None
        return version, self.path(version, verify=verify)

    def verify(self, version: int, manifest: AdapterManifest | None = None) -> None:
        """Raise AdapterIntegrityError unless the files match the manifest."""
        manifest = manifest or self.manifest(version)
        directory = self.root / version_dirname(version)
        for name in REQUIRED_FILES:
            if not (directory / name).is_file():
                raise AdapterIntegrityError(f"adapter version {version}: {name} is missing in {directory}")
        actual = sha256_file(directory / ADAPTER_WEIGHTS)
        if actual != manifest.sha256:
            raise AdapterIntegrityError(
                f"adapter version {version}: {ADAPTER_WEIGHTS} has sha256 {actual}, manifest says {manifest.sha256}"
            )

    # --- publishing -----------------------------------------------------------------

    def publish(
        self,
        source_dir: Path,
        *,
        step: int,
        objective: str,
        metrics: Mapping[str, float] | None = None,
        parent_version: int | None = None,
    ) -> AdapterManifest:
        """Publish the PEFT files in ``source_dir`` as the next version, then tell the notifier (the registry).

        ``parent_version`` defaults to the newest version on disk (the adapter training started from).
        """
        source_dir = Path(source_dir)
        missing = [name for name in REQUIRED_FILES if not (source_dir / name).is_file()]
        if missing:
            raise AdapterStoreError(f"{source_dir} is not a PEFT adapter folder: missing {', '.join(missing)}")
        with self._publish_lock():
            version = self.next_version()
            final_dir = self.root / version_dirname(version)
            tmp_dir = self.root / f"{TMP_PREFIX}{version_dirname(version)}-{uuid.uuid4().hex[:8]}"
            tmp_dir.mkdir()
            try:
                for name in REQUIRED_FILES:
                    shutil.copyfile(source_dir / name, tmp_dir / name)
                    _fsync_file(tmp_dir / name)
                manifest = AdapterManifest(
                    version=version,
                    step=step,
                    sha256=sha256_file(tmp_dir / ADAPTER_WEIGHTS),
                    created_at=datetime.now(UTC).isoformat(),
                    objective=objective,
                    metrics={k: float(v) for k, v in (metrics or {}).items()},
                    parent_version=self.latest() if parent_version is None else parent_version,
                    size_bytes=(tmp_dir / ADAPTER_WEIGHTS).stat().st_size,
                )
                (tmp_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
                _fsync_file(tmp_dir / MANIFEST)
                _fsync_dir(tmp_dir)
                if final_dir.exists():
                    raise AdapterStoreError(f"{final_dir} already exists; refusing to overwrite a published version")
                os.rename(tmp_dir, final_dir)
            except BaseException:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                raise
            _fsync_dir(self.root)
        if self.notifier is not None:
            self.notifier.announce(manifest)
        return manifest

    def clean_stale_temp(self, older_than_s: float = 3600.0) -> list[Path]:
        """Remove temp dirs left by crashed publishers (older than ``older_than_s``)."""
        removed = []
        cutoff = time.time() - older_than_s
        for entry in self.root.iterdir():
            if entry.name.startswith(TMP_PREFIX) and entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        return removed

    # --- helpers -------------------------------------------------------------------

    def _version_dirs(self) -> list[int]:
        found = []
        for entry in self.root.iterdir():
            match = _VERSION_DIR.match(entry.name)
            if match and entry.is_dir():
                found.append(int(match.group(1)))
        return sorted(found)

    @contextlib.contextmanager
    def _publish_lock(self) -> Iterator[None]:
        """One publisher at a time per store (advisory lock; a second learner waits)."""
        with open(self.root / LOCK, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

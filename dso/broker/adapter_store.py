"""Adapter store: versioned PEFT adapters on a local path or any filesystem URL, each published whole.

Layout under the store root (a directory, or a prefix such as ``s3://bucket/dso/adapters``)::

    v000001/  adapter_config.json  adapter_model.safetensors  manifest.json
    v000002/  ...
    .tmp-v000003-<random>/         a local publish in progress (or one that crashed): ignored

Two backends behind one ``AdapterStore``:

* **Local** (a plain path or ``file://``; a shared ReadWriteMany volume counts as local): a publish
  writes into a temp dir inside the root, fsyncs and renames it to its final name in one
  ``os.rename``; an advisory ``fcntl`` lock keeps two publishers apart.
* **Object storage** (``s3://``, ``gs://``, ``hdfs://``, ``abfs://``; anything
  ``pyarrow.fs.FileSystem.from_uri`` opens): there is no atomic rename, so ``manifest.json`` is the
  commit point. The weights and config are written first, the manifest last (a single object PUT:
  readers see all of it or none); a version without a manifest is ignored, and its number is never
  reused. Readers get local files through :meth:`AdapterStore.pull`: a cache directory keyed by
  version and weights sha256, downloaded once and checked against the manifest. There is no lock:
  **one learner publishes to an object-store root at a time** (the loop runs one learner; pyarrow
  has no conditional create to do better). A second publisher that collides on a version number is
  refused when it finds that version already present.

Why ``pyarrow.fs`` rather than fsspec: pyarrow is already installed and pinned, and ships native S3,
GCS, HDFS and Azure clients with the standard credential chains (``AWS_ACCESS_KEY_ID`` ...,
``AWS_ENDPOINT_URL``; ``GOOGLE_APPLICATION_CREDENTIALS``) and no further Python packages; it is
also how Ray Train opens its ``storage_path``, so one URL means the same to both. fsspec would need
s3fs / gcsfs, whose aiobotocore pins botocore (and python-dateutil) tightly against the lock.
S3-compatible servers (MinIO, moto) need an endpoint: ``BrokerSettings.adapter_store_endpoint`` or
``AWS_ENDPOINT_URL``; credentials never come from settings, only from the environment.

One source of truth for "the latest adapter": the store holds the *files*; which version the
fleet knows about is the Redis registry's (``broker.registry.latest()``, moved by every publish
through the notifier), and which version generators serve is the promotion store's
(``broker.promotion.promoted()``). The store keeps no pointer file of its own (a ``LATEST`` file
left in an old store is ignored): ``latest()`` here is only the newest complete version, which a
restarted learner uses to resume its numbering, and ``next_version()`` counts past every version
present, complete or not, so numbers never repeat across restarts.

Version 0 means "the base model, no adapter"; the first published version is 1.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from pyarrow import fs as pafs

    from dso.config import BrokerSettings

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST = "manifest.json"
LOCK = ".publish.lock"
TMP_PREFIX = ".tmp-"
REQUIRED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_HASH_CHUNK = 1 << 20
_LOCAL_SCHEMES = ("", "file")
_CACHE_SHA_CHARS = 16  # cache dir name: v000003-<first 16 hex of the weights sha256>; the full sha is checked


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


def _copy_hashing(source: BinaryIO, target: BinaryIO) -> tuple[str, int]:
    """Copy a stream and return the sha256 and size of what went through (upload and download hash on the way)."""
    digest, size = hashlib.sha256(), 0
    while chunk := source.read(_HASH_CHUNK):
        digest.update(chunk)
        target.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_local_url(root: str | os.PathLike[str]) -> bool:
    """True for a plain path or a ``file://`` URL (the local backend), False for ``s3://`` and the like."""
    text = os.fspath(root)
    return "://" not in text or urlparse(text).scheme in _LOCAL_SCHEMES


def _local_path(root: str | os.PathLike[str]) -> Path:
    text = os.fspath(root)
    return Path(unquote(urlparse(text).path)) if "://" in text else Path(text)


def open_filesystem(url: str, endpoint_override: str | None = None) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, base path)`` for an object-store URL; ``endpoint_override`` is for S3-compatible servers."""
    from pyarrow import fs as pafs

    parsed = urlparse(url)
    if endpoint_override:
        if parsed.scheme != "s3":
            raise AdapterStoreError(f"an adapter store endpoint applies to s3:// URLs only, not {url}")
        base = f"{parsed.netloc}{parsed.path}".rstrip("/")
        return pafs.S3FileSystem(endpoint_override=endpoint_override), base
    filesystem, base = pafs.FileSystem.from_uri(url)
    return filesystem, base.rstrip("/")


class _LocalFiles:
    """A directory on this machine (or a mounted shared volume): temp dir + rename, fcntl lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return str(self.root)

    def listing(self) -> dict[int, bool]:
        found = {}
        for entry in self.root.iterdir():
            match = _VERSION_DIR.match(entry.name)
            if match and entry.is_dir():
                found[int(match.group(1))] = (entry / MANIFEST).is_file()
        return found

    def read_manifest(self, version: int) -> str:
        return (self.root / version_dirname(version) / MANIFEST).read_text()

    def verify(self, version: int, manifest: AdapterManifest) -> None:
        _verify_dir(version, self.root / version_dirname(version), manifest)

    def pull(self, version: int, manifest: AdapterManifest, verify: bool) -> Path:
        directory = self.root / version_dirname(version)
        if verify:
            _verify_dir(version, directory, manifest)
        return directory

    @contextlib.contextmanager
    def publish_lock(self) -> Iterator[None]:
        """One publisher at a time per store (advisory lock; a second learner waits)."""
        with open(self.root / LOCK, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write(self, version: int, source_dir: Path, build: Callable[[str, int], AdapterManifest]) -> AdapterManifest:
        final_dir = self.root / version_dirname(version)
        tmp_dir = self.root / f"{TMP_PREFIX}{version_dirname(version)}-{uuid.uuid4().hex[:8]}"
        tmp_dir.mkdir()
        try:
            for name in REQUIRED_FILES:
                shutil.copyfile(source_dir / name, tmp_dir / name)
                _fsync_file(tmp_dir / name)
            weights = tmp_dir / ADAPTER_WEIGHTS
            manifest = build(sha256_file(weights), weights.stat().st_size)
            (tmp_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            _fsync_file(tmp_dir / MANIFEST)
            _fsync_dir(tmp_dir)
            if final_dir.exists():
                raise AdapterStoreError(f"{final_dir} already exists; refusing to overwrite a published version")
            os.rename(tmp_dir, final_dir)  # the commit point
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        _fsync_dir(self.root)
        return manifest

    def clean_stale_temp(self, older_than_s: float) -> list[Path]:
        return _sweep_temp_dirs(self.root, older_than_s)

    def check(self) -> str:
        ok = self.root.is_dir() and os.access(self.root, os.R_OK | os.X_OK)
        return "ok" if ok else f"adapter store {self.root} is not readable"



def _sweep_temp_dirs(folder: Path, older_than_s: float) -> list[Path]:
    """Remove the temp dirs (a crashed publish or download) under ``folder`` older than ``older_than_s``."""
    removed = []
    cutoff = time.time() - older_than_s
    for entry in folder.iterdir():
        if entry.name.startswith(TMP_PREFIX) and entry.is_dir() and entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed

class _ObjectFiles:
    """An object-store prefix through pyarrow.fs: the manifest is the commit point; readers pull into a local cache."""

    def __init__(self, url: str, cache_dir: Path, endpoint_override: str | None) -> None:
        self._url = url.rstrip("/")
        self.fs, self.base = open_filesystem(url, endpoint_override)
        # one cache folder per store: two stores may both hold a v000003 with the same weights but other manifests
        self.cache_dir = Path(cache_dir) / hashlib.sha256(self._url.encode()).hexdigest()[:_CACHE_SHA_CHARS]

    @property
    def url(self) -> str:
        return self._url

    def _key(self, version: int, name: str) -> str:
        return f"{self.base}/{version_dirname(version)}/{name}"

    def listing(self) -> dict[int, bool]:
        """One recursive listing (a paginated LIST on S3), not one request per version."""
        from pyarrow import fs as pafs

        found: dict[int, bool] = {}
        prefix = f"{self.base}/"
        for info in self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True, recursive=True)):
            parts = info.path[len(prefix):].split("/") if info.path.startswith(prefix) else []
            match = _VERSION_DIR.match(parts[0]) if parts else None
            if match is None:
                continue
            version = int(match.group(1))
            committed = len(parts) == 2 and parts[1] == MANIFEST and info.type == pafs.FileType.File
            found[version] = found.get(version, False) or committed
        return found

    def read_manifest(self, version: int) -> str:
        with self.fs.open_input_stream(self._key(version, MANIFEST)) as stream:
            return stream.read().decode()

    def _missing(self, version: int) -> list[str]:
        from pyarrow import fs as pafs

        infos = self.fs.get_file_info([self._key(version, name) for name in REQUIRED_FILES])
        return [name for name, info in zip(REQUIRED_FILES, infos) if info.type != pafs.FileType.File]

    def verify(self, version: int, manifest: AdapterManifest) -> None:
        missing = self._missing(version)
        if missing:
            raise AdapterIntegrityError(f"adapter version {version}: {', '.join(missing)} missing in {self._url}")
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self._key(version, ADAPTER_WEIGHTS)) as stream:
            while chunk := stream.read(_HASH_CHUNK):
                digest.update(chunk)
        _check_sha(version, digest.hexdigest(), manifest)

    def pull(self, version: int, manifest: AdapterManifest, verify: bool) -> Path:
        """The version's files in the local cache: reused when present (re-hashed when ``verify``), else downloaded.

        A download is always checked against the manifest (the hash is taken on the way); a cached copy
        whose weights no longer match is dropped and fetched again.
        """
        target = self.cache_dir / f"{version_dirname(version)}-{manifest.sha256[:_CACHE_SHA_CHARS]}"
        if all((target / name).is_file() for name in (*REQUIRED_FILES, MANIFEST)):
            if not verify or sha256_file(target / ADAPTER_WEIGHTS) == manifest.sha256:
                return target
            shutil.rmtree(target, ignore_errors=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{version_dirname(version)}-", dir=self.cache_dir))
        try:
            missing = self._missing(version)
            if missing:
                raise AdapterIntegrityError(f"adapter version {version}: {', '.join(missing)} missing in {self._url}")
            for name in (*REQUIRED_FILES, MANIFEST):
                with self.fs.open_input_stream(self._key(version, name)) as source, open(tmp_dir / name, "wb") as sink:
                    sha, _size = _copy_hashing(source, sink)
                if name == ADAPTER_WEIGHTS:
                    _check_sha(version, sha, manifest)
            try:
                os.rename(tmp_dir, target)
            except OSError:  # another process on this node cached it first: theirs is as good
                shutil.rmtree(tmp_dir, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        return target

    @contextlib.contextmanager
    def publish_lock(self) -> Iterator[None]:
        """No lock on object storage: one learner per store (module docstring)."""
        yield

    def write(self, version: int, source_dir: Path, build: Callable[[str, int], AdapterManifest]) -> AdapterManifest:
        from pyarrow import fs as pafs

        present = self.fs.get_file_info(pafs.FileSelector(f"{self.base}/{version_dirname(version)}", allow_not_found=True))
        if present:
            raise AdapterStoreError(f"{self._url}/{version_dirname(version)} already exists; is a second learner publishing here?")
        sha, size = "", 0
        for name in REQUIRED_FILES:
            with open(source_dir / name, "rb") as source, self.fs.open_output_stream(self._key(version, name)) as sink:
                file_sha, file_size = _copy_hashing(source, sink)
            if name == ADAPTER_WEIGHTS:
                sha, size = file_sha, file_size
        manifest = build(sha, size)
        with self.fs.open_output_stream(self._key(version, MANIFEST)) as sink:  # the commit point, written last
            sink.write(manifest.model_dump_json(indent=2).encode())
        return manifest

    def clean_stale_temp(self, older_than_s: float) -> list[Path]:
        """Nothing to sweep remotely (no temp objects); old local cache downloads that crashed are removed."""
        return _sweep_temp_dirs(self.cache_dir, older_than_s) if self.cache_dir.is_dir() else []

    def check(self) -> str:
        from pyarrow import fs as pafs

        try:
            self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        except Exception as exc:  # noqa: BLE001 - any failure means not readable
            return f"adapter store {self._url} is not readable: {type(exc).__name__}"
        return "ok"


def _check_sha(version: int, actual: str, manifest: AdapterManifest) -> None:
    if actual != manifest.sha256:
        raise AdapterIntegrityError(
            f"adapter version {version}: {ADAPTER_WEIGHTS} has sha256 {actual}, manifest says {manifest.sha256}"
        )


def _verify_dir(version: int, directory: Path, manifest: AdapterManifest) -> None:
    for name in REQUIRED_FILES:
        if not (directory / name).is_file():
            raise AdapterIntegrityError(f"adapter version {version}: {name} is missing in {directory}")
    _check_sha(version, sha256_file(directory / ADAPTER_WEIGHTS), manifest)


class AdapterStore:
    """Versioned adapters under one root (a path or a filesystem URL), each published whole.

    ``root`` is the local directory for a local store and None on object storage; ``url`` names
    either. ``cache_dir`` (object storage only) is where :meth:`pull` puts local copies; by
    default a ``dso-adapter-cache`` folder in the system temp dir.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        notifier: AdapterNotifier | None = None,
        *,
        endpoint_override: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.notifier = notifier
        self._manifests: dict[int, AdapterManifest] = {}  # object storage only: versions are immutable
        if is_local_url(root):
            self.root: Path | None = _local_path(root)
            self._files: _LocalFiles | _ObjectFiles = _LocalFiles(self.root)
        else:
            self.root = None
            cache = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "dso-adapter-cache"
            self._files = _ObjectFiles(os.fspath(root), cache, endpoint_override)

    @classmethod
    def from_settings(cls, settings: BrokerSettings, notifier: AdapterNotifier | None = None) -> AdapterStore:
        """The run's store: ``adapter_store_dir`` (a path or URL), its endpoint and the local cache."""
        return cls(
            settings.resolved_adapter_store_dir,
            notifier,
            endpoint_override=settings.adapter_store_endpoint,
            cache_dir=settings.resolved_adapter_cache_dir,
        )

    @property
    def url(self) -> str:
        """The root as given: a path for a local store, the URL otherwise (for logs and summaries)."""
        return self._files.url

    @property
    def remote(self) -> bool:
        return self.root is None

    # --- reading ----------------------------------------------------------------

    def versions(self) -> list[int]:
        """Complete versions (those with a manifest), ascending."""
        return sorted(v for v, committed in self._files.listing().items() if committed)

    def latest(self) -> int | None:
        """The newest complete version in the store, or None before the first publish.

        What this store holds, not what the fleet is told: readers that serve or score
        adapters ask ``broker.registry.latest()`` (published) or ``broker.promotion.promoted()``.
        """
        versions = self.versions()
        return versions[-1] if versions else None

    def next_version(self) -> int:
        """One past every version present (complete or not), so numbers never repeat."""
        return max([0, *self._files.listing()]) + 1

    def manifest(self, version: int) -> AdapterManifest:
        cached = self._manifests.get(version)
        if cached is not None:
            return cached
        try:
            manifest = AdapterManifest.model_validate_json(self._files.read_manifest(version))
        except FileNotFoundError as exc:
            raise AdapterStoreError(f"adapter version {version} is not published in {self.url}") from exc
        if self.remote:
            self._manifests[version] = manifest
        return manifest

    def pull(self, version: int, verify: bool = True) -> Path:
        """A local directory holding the version's files (PEFT ``from_pretrained`` loads it), checked against its manifest.

        Local store: the version's own directory. Object storage: a cache directory keyed by version and
        sha256, downloaded once (always checked on download; ``verify`` re-hashes a cached copy).
        """
        manifest = self.manifest(version)
        return self._files.pull(version, manifest, verify)

    path = pull  # the name callers used before object storage

    def latest_path(self, verify: bool = True) -> tuple[int, Path] | None:
        """``(version, local directory)`` of the latest adapter, or None before the first publish."""
        version = self.latest()
        if version is None:
            return None
        return version, self.pull(version, verify=verify)

    def verify(self, version: int, manifest: AdapterManifest | None = None) -> None:
        """Raise AdapterIntegrityError unless the stored files match the manifest."""
        self._files.verify(version, manifest or self.manifest(version))

    def check(self) -> str:
        """'ok' when the store can be read (readiness probes), else what is wrong."""
        return self._files.check()

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

        ``parent_version`` defaults to the newest version in the store (the adapter training started from).
        """
        source_dir = Path(source_dir)
        missing = [name for name in REQUIRED_FILES if not (source_dir / name).is_file()]
        if missing:
            raise AdapterStoreError(f"{source_dir} is not a PEFT adapter folder: missing {', '.join(missing)}")
        with self._files.publish_lock():
            version = self.next_version()
            parent = self.latest() if parent_version is None else parent_version

            def build(sha256: str, size: int) -> AdapterManifest:
                return AdapterManifest(
                    version=version,
                    step=step,
                    sha256=sha256,
                    created_at=datetime.now(UTC).isoformat(),
                    objective=objective,
                    metrics={k: float(v) for k, v in (metrics or {}).items()},
                    parent_version=parent,
                    size_bytes=size,
                )

            manifest = self._files.write(version, source_dir, build)
        if self.notifier is not None:
            self.notifier.announce(manifest)
        return manifest

    def clean_stale_temp(self, older_than_s: float = 3600.0) -> list[Path]:
        """Remove temp dirs left by crashed publishers (local) or downloads (object-store cache), older than ``older_than_s``."""
        return self._files.clean_stale_temp(older_than_s)

"""Files of the published harness, staged by URL and checked by SHA-256 (never copied into the project).

``benchmarks/data/published_artifacts.json`` lists them (repository, commit, per file: path, bytes, sha256, url).
:func:`stage_artifact` fetches one from its URL, or takes it from a local folder or file (a checkout of the
published repository, or a folder of staged copies for clusters without web access), and writes it only when
its size and checksum match.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Any

from .io import atomic_write_bytes

MANIFEST = Path(__file__).parent / "benchmarks" / "data" / "published_artifacts.json"
MAX_DOWNLOAD_BYTES = 64 << 20


class ArtifactError(RuntimeError):
    """A published file could not be staged: unreachable, unknown or not the published bytes."""


@lru_cache(maxsize=1)
def manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def artifact(key: str) -> dict[str, Any]:
    files = manifest()["files"]
    if key not in files:
        raise ArtifactError(f"unknown published file {key!r}; known: {', '.join(sorted(files))}")
    return files[key]


def _candidates(entry: dict[str, Any], source: Path) -> list[Path]:
    """Where a local ``source`` may hold the file: the file itself, by its base name, or by its repository path."""
    if source.is_file():
        return [source]
    return [source / Path(entry["path"]).name, source / entry["path"]]


def _read(entry: dict[str, Any], source: str | Path | None) -> tuple[bytes, str]:
    if source is None or str(source).startswith(("https://", "http://")):
        url = str(source) if source else entry["url"]
        try:
            with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 - http(s) URLs only
                data = response.read(MAX_DOWNLOAD_BYTES + 1)
        except OSError as exc:
            raise ArtifactError(f"could not fetch {url} ({type(exc).__name__}: {str(exc)[:120]}); stage it where "
                                "the web is reachable, or give a local copy") from None
        return data, url
    for path in _candidates(entry, Path(source)):
        if path.is_file():
            return path.read_bytes(), str(path)
    raise ArtifactError(f"{source} holds no copy of {entry['path']}")


def stage_artifact(key: str, dest: Path, source: str | Path | None = None) -> dict[str, Any]:
    """Write published file ``key`` to ``dest`` after checking it; return its provenance record.

    ``source``: ``None`` (its URL at the published commit), another http(s) URL, or a local file or folder."""
    entry = artifact(key)
    data, origin = _read(entry, source)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry["bytes"] or digest != entry["sha256"]:
        raise ArtifactError(f"{origin} is not the published {entry['path']} (sha256 {digest[:12]}…, "
                            f"{len(data)} bytes; expected {entry['sha256'][:12]}…, {entry['bytes']} bytes)")
    atomic_write_bytes(Path(dest), data)
    return {"artifact": key, "path": entry["path"], "sha256": digest, "from": origin,
            "repository": manifest()["repository"], "commit": manifest()["commit"]}


def verified_copy(key: str, path: Path) -> bool:
    """Whether ``path`` holds the published bytes of ``key``."""
    entry = artifact(key)
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    return len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]


__all__ = ["ArtifactError", "artifact", "manifest", "stage_artifact", "verified_copy"]

"""Model versions: immutable folders under ``<data>/models`` and an atomic ``CURRENT`` pointer.

A version is written under a temporary name, every file's SHA-256 recorded in ``manifest.json``
(parameters, data time range, counts, metrics, code version), and only then renamed into place;
``publish`` swaps the pointer with write-temp + ``os.replace``, so a reader sees the old version
or the new one, never half of one. ``load_version`` checks the manifest and every file against
it and refuses a corrupt or half-written version with a clear error (``Conflict``).

Layout of ``<models>/<version>/``::

    manifest.json            what, when, from which data, how good, file checksums
    arrays.npz               title vectors, user vectors, ids, statistics, user state
    covisit.npz              co-visitation (sparse)
    ease.npy                 EASE weights (small catalogs only)
    item_item.NAME.npz       further item-item sources (RP3beta, item-kNN, session; sparse), when configured
    ann.faiss                the FAISS index (each distinct title vector once)
    ann.rows.npy             each title's row of the index (absent in versions before the dedupe)
    ranker.txt               the LightGBM model
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from reelrec.errors import Conflict, NotFound

MANIFEST = "manifest.json"
POINTER = "CURRENT"
FORMAT = 1


def code_version() -> str:
    """The package version plus the git commit when run from a checkout."""
    import reelrec
    v = getattr(reelrec, "__version__", "0")
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+{sha}" if sha else v


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def new_version_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ModelStore:
    """Versions of trained models in a folder (local today; the same layout on object storage)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path(self, version: str) -> Path:
        return self.root / version

    def write(self, writer, manifest: dict, version: str | None = None) -> str:
        """Write a version: ``writer(folder)`` puts the files, then the manifest seals them.

        The folder appears under its final name only when complete.
        """
        version = version or new_version_id()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{version}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            writer(tmp)
            files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size}
                     for p in sorted(tmp.iterdir()) if p.is_file() and p.name != MANIFEST}
            full = {"format": FORMAT, "version": version,
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(),
                    "code_version": code_version(), **manifest, "files": files}
            _atomic_write_text(tmp / MANIFEST, json.dumps(full, indent=2, default=_json_default))
            os.replace(tmp, self.path(version))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    def versions(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted((p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      reverse=True)

    def manifest(self, version: str) -> dict:
        path = self.path(version) / MANIFEST
        if not self.path(version).is_dir():
            raise NotFound(f"no model version {version!r} under {self.root}")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise Conflict(f"model version {version!r} has no readable manifest ({exc}); "
                           "it is incomplete or corrupt") from None

    def verify(self, version: str) -> dict:
        """The manifest, after checking every listed file's size and checksum.

        Raises:
            NotFound: no such version.
            Conflict: the manifest is missing or unreadable, a file is missing, or a checksum
                differs (a half-written or corrupt version).
        """
        m = self.manifest(version)
        if m.get("format") != FORMAT or "files" not in m:
            raise Conflict(f"model version {version!r}: unknown manifest format {m.get('format')!r}")
        for name, meta in m["files"].items():
            p = self.path(version) / name
            if not p.is_file():
                raise Conflict(f"model version {version!r}: file {name} is missing")
            if p.stat().st_size != meta["bytes"] or _sha256(p) != meta["sha256"]:
                raise Conflict(f"model version {version!r}: file {name} does not match its checksum "
                               "(corrupt or half-written)")
        return m

    def publish(self, version: str) -> None:
        """Point ``CURRENT`` at ``version`` (verified first) with an atomic replace."""
        self.verify(version)
        _atomic_write_text(self.root / POINTER, version + "\n")

    def current(self) -> str | None:
        p = self.root / POINTER
        if not p.exists():
            return None
        return p.read_text().strip() or None

    def prune(self, keep: int, protect: tuple[str, ...] = ()) -> list[str]:
        """Delete all but the newest ``keep`` versions; never the published one nor ``protect``
        (e.g. the versions the cache serves). Returns the deleted versions.

        A version leaves by a rename first, so a concurrent reader sees it whole or not at all.
        """
        spare = {self.current(), *protect}
        doomed = [v for v in self.versions()[keep:] if v not in spare]
        for v in doomed:
            trash = self.root / f".trash-{v}-{uuid.uuid4().hex[:6]}"
            try:
                os.replace(self.path(v), trash)
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
        return doomed

    def list(self) -> list[dict]:
        """Each version, newest first: id, created, ok (verifies), current, counts and metrics."""
        cur = self.current()
        out = []
        for v in self.versions():
            row = {"version": v, "current": v == cur}
            try:
                m = self.verify(v)
                row.update(ok=True, created=m.get("created"), counts=m.get("counts", {}),
                           metrics=m.get("metrics", {}), data=m.get("data", {}))
            except (Conflict, NotFound) as exc:
                row.update(ok=False, error=str(exc))
            out.append(row)
        return out


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (dt.datetime, dt.date)):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --- sparse helpers for the arrays file -----------------------------------------------------------
def put_sparse(arrays: dict, name: str, m: sp.spmatrix | None) -> None:
    if m is None:
        return
    m = sp.csr_matrix(m)
    arrays[f"{name}__data"], arrays[f"{name}__indices"] = m.data, m.indices
    arrays[f"{name}__indptr"], arrays[f"{name}__shape"] = m.indptr, np.array(m.shape)


def get_sparse(arrays, name: str) -> sp.csr_matrix | None:
    if f"{name}__data" not in arrays:
        return None
    return sp.csr_matrix((arrays[f"{name}__data"], arrays[f"{name}__indices"], arrays[f"{name}__indptr"]),
                         shape=tuple(arrays[f"{name}__shape"]))

"""``manifest.json`` of a stage folder: what made the files, and what failed.

A manifest has an *identity*: the SHA-256 of the fields that determine the numbers in the folder
(stage, dataset classes, prompts, CLIP checkpoint hash, numeric options). A later run into the same
folder must have the same identity (or be forced), and a later stage records the identity of the
folder it read. Several processes (shards) may update one manifest; they take turns under a lock
file. Failures are kept per item id until that item succeeds.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

from clipes.errors import UserError
from clipes.store.fsutil import folder_lock, write_json

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_MAX_RUNS = 100
_VERSIONED = ("clipes", "torch", "torchvision", "numpy", "pillow", "clip-anytorch", "opencv-python",
              "pydensecrf2", "mmsegmentation", "mmcv-lite", "mmengine")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict:
    """Versions of Python and of the packages that can change the numbers."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def identity_of(fields: dict) -> str:
    """SHA-256 of the canonical JSON of ``fields``."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, or None when there is none.

    Raises:
        UserError: the manifest exists but is not valid JSON.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable manifest ({exc}); move it away to start over") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a clipes manifest")
    return data


def begin_run(folder: Path, stage: str, header: dict, identity: str, force: bool = False) -> dict:
    """Create or check the folder's manifest before a run writes anything.

    Args:
        folder: the stage folder (created if missing).
        stage: stage name, e.g. ``"cams"``.
        header: descriptive fields (options, classes, prompts, checkpoint, ...).
        identity: :func:`identity_of` the fields that determine the numbers.
        force: accept a folder made with another identity (its files will be recomputed).

    Returns:
        The manifest as written.

    Raises:
        UserError: the folder holds another stage's files or files made another way.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder):
        old = read_manifest(folder)
        if old is not None and old.get("stage") != stage:
            raise UserError(f"{folder} holds a '{old.get('stage')}' folder, not '{stage}'")
        if old is not None and old.get("identity") != identity and not force:
            raise UserError(
                f"{folder} was made with other settings (CLIP, prompts, classes or options differ: "
                f"identity {str(old.get('identity'))[:12]} vs {identity[:12]}); use another WORK or --force"
            )
        same = old is not None and old.get("identity") == identity
        data = {
            "stage": stage,
            "format_version": FORMAT_VERSION,
            "identity": identity,
            "created": old.get("created", now()) if same else now(),
            "updated": now(),
            **header,
            "versions": package_versions(),
            "counts": old.get("counts", {}) if same else {},
            "failures": old.get("failures", {}) if same else {},
            "notes": old.get("notes", {}) if same else {},
            "runs": old.get("runs", []) if same else [],
        }
        write_json(folder / MANIFEST_NAME, data)
    return data


def end_run(folder: Path, run: dict, succeeded: set, failures: dict, notes: dict, file_count: int) -> dict:
    """Merge one run's outcome into the manifest (under the folder lock).

    Args:
        run: summary of this run (shard, counts, seconds, device, ...).
        succeeded: ids written or found done by this run (their old failures are dropped).
        failures: ``{id: reason}`` of this run.
        notes: ``{id: note}`` of this run (e.g. image mode conversions).
        file_count: output files now in the folder.
    """
    folder = Path(folder)
    with folder_lock(folder):
        data = read_manifest(folder) or {}
        merged = {k: v for k, v in data.get("failures", {}).items() if k not in succeeded}
        merged.update(failures)
        data["failures"] = dict(sorted(merged.items()))
        data["notes"] = dict(sorted({**data.get("notes", {}), **notes}.items()))
        data["counts"] = {"files": file_count, "failed": len(merged)}
        data["runs"] = (data.get("runs", []) + [run])[-_MAX_RUNS:]
        data["updated"] = now()
        write_json(folder / MANIFEST_NAME, data)
    return data


def command_line() -> str:
    return " ".join(sys.argv)

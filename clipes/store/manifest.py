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
from typing import Callable

from clipes.errors import UserError
from clipes.store.fsutil import folder_lock, hold_folder, release_folder, write_json

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


FORCE_HINT = "use another WORK or OUT, or --force to recompute it"


def begin_run(folder: Path, stage: str, header: dict, identity: str, force: bool = False, hold: bool = True,
              shared: bool = False, hint: str = FORCE_HINT, echo: Callable[[str], None] | None = None) -> dict:
    """Become the folder's writer and create or check its manifest before a run writes anything.

    Args:
        folder: the stage folder (created if missing).
        stage: stage name, e.g. ``"cams"``.
        header: descriptive fields (options, classes, prompts, checkpoint, ...).
        identity: :func:`identity_of` the fields that determine the numbers.
        force: accept a folder made with another identity (its files will be recomputed).
        hold: hold the folder (:func:`clipes.store.fsutil.hold_folder`) until :func:`end_run`: a
            second run on it is refused while this one writes. False for helper processes of a run
            that holds it (ranks > 0 of a training run).
        shared: shards of one run hold the folder together.
        hint: what the refusal of a folder made another way tells the user to do.
        echo: where a note about a lock taken over from a killed run goes.

    Returns:
        The manifest as written.

    Raises:
        UserError: the folder is being written by another run, holds another stage's files or
            files made another way.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hold:
        hold_folder(folder, shared, echo)
    try:
        return _write_header(folder, stage, header, identity, force, hint)
    except BaseException:
        if hold:
            release_folder(folder)
        raise


def _write_header(folder: Path, stage: str, header: dict, identity: str, force: bool, hint: str) -> dict:
    with folder_lock(folder):
        old = read_manifest(folder)
        if old is not None and old.get("stage") != stage:
            raise UserError(f"{folder} holds a '{old.get('stage')}' folder, not '{stage}'")
        if old is not None and old.get("identity") != identity and not force:
            raise UserError(
                f"{folder} was made with other settings (CLIP, prompts, classes or options differ: "
                f"identity {str(old.get('identity'))[:12]} vs {identity[:12]}); {hint}"
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
    """Merge one run's outcome into the manifest (under the folder lock), then release the folder.

    Args:
        run: summary of this run (shard, counts, seconds, device, ...).
        succeeded: ids written or found done by this run (their old failures are dropped).
        failures: ``{id: reason}`` of this run.
        notes: ``{id: note}`` of this run (e.g. image mode conversions).
        file_count: output files now in the folder.
    """
    folder = Path(folder)
    try:
        return _merge_run(folder, run, succeeded, failures, notes, file_count)
    finally:
        release_folder(folder)


def _merge_run(folder: Path, run: dict, succeeded: set, failures: dict, notes: dict, file_count: int) -> dict:
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


def record_failures(folder: Path, failures: dict) -> None:
    """Add ``{id: reason}`` to the manifest's failures now, before the run ends (a training run's
    images left out, which a killed run must not lose)."""
    if not failures:
        return
    with folder_lock(folder):
        data = read_manifest(folder) or {}
        data["failures"] = dict(sorted({**data.get("failures", {}), **failures}.items()))
        data["counts"] = {**data.get("counts", {}), "failed": len(data["failures"])}
        write_json(Path(folder) / MANIFEST_NAME, data)


def command_line() -> str:
    return " ".join(sys.argv)

"""File writes that never leave a partial file behind.

Every output is written to a hidden temporary name in the destination folder and renamed into
place (``os.replace`` is atomic on POSIX), so a reader or a resumed run sees either the old file,
the complete new file, or nothing. Temporaries of a killed run are removed by
:func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from clipes.errors import UserError

TMP_MARK = ".tmp-"


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb"):
    """Open a temporary sibling of ``path`` for writing; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, data: dict) -> None:
    """Atomically write ``data`` as indented UTF-8 JSON."""
    with atomic_open(path, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=False)
        handle.write("\n")


def remove_stale_temporaries(folder: Path, older_than_s: float = 0.0) -> int:
    """Delete leftovers of killed writers in ``folder``; returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed, now = 0, time.time()
    for entry in folder.iterdir():
        if entry.name.startswith(".") and TMP_MARK in entry.name:
            try:
                if now - entry.stat().st_mtime >= older_than_s:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


@contextlib.contextmanager
def folder_lock(folder: Path, timeout_s: float = 120.0):
    """A lock file in ``folder`` so that shards update a shared manifest one at a time."""
    lock = Path(folder) / ".lock"
    deadline = time.time() + timeout_s
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:  # a lock left by a killed process
                if time.time() - lock.stat().st_mtime > timeout_s:
                    lock.unlink()
                    continue
            except FileNotFoundError:
                continue
            if time.time() > deadline:
                raise TimeoutError(f"could not lock {folder} (remove {lock} if no clipes run is active)")
            time.sleep(0.05)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """Numbered content lines of a UTF-8 text file: blank lines and ``#`` comments skipped.

    Args:
        path: the file.
        what: how messages name it, e.g. ``"split file"``.

    Raises:
        UserError: missing, unreadable or without content lines.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None
    rows = [(n, line.rstrip("\r\n")) for n, line in enumerate(text.splitlines(), 1)]
    rows = [(n, line) for n, line in rows if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise UserError(f"{what} {path} is empty")
    return rows


def item_path(folder: Path, image_id: str, suffix: str) -> Path:
    """``<folder>/<image_id><suffix>``, refusing ids that are not plain file names.

    Raises:
        InputError: the id contains a path separator or starts with a dot.
    """
    from clipes.errors import InputError

    if not image_id or "/" in image_id or "\\" in image_id or image_id.startswith("."):
        raise InputError(f"image id {image_id!r} cannot be used as a file name")
    return Path(folder) / f"{image_id}{suffix}"


def ids_in(folder: Path, suffix: str) -> set[str]:
    """Ids of the finished ``<id><suffix>`` files in ``folder`` (temporaries are hidden files)."""
    folder = Path(folder)
    if not folder.is_dir():
        return set()
    return {p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".")}

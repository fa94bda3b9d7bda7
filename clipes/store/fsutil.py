"""File writes that never leave a partial file behind.

Every output is written to a hidden temporary name in the destination folder and renamed into
place (``os.replace`` is atomic on POSIX), so a reader or a resumed run sees either the old file,
the complete new file, or nothing. Temporaries of a killed run are removed by
:func:`remove_stale_temporaries`. File hashes (:func:`file_sha256`) that identify inputs in
manifests and checkpoints live here too, below every package that records them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from clipes.errors import UserError

TMP_MARK = ".tmp-"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


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


class BackgroundWriter:
    """Runs an image's file writes on background threads while the caller computes the next image.

    PNG and npz encoding, the copies and ``fsync`` release the GIL, so on a machine whose other
    core would otherwise wait they cost the caller nothing. Each write is still atomic
    (:func:`atomic_open`). At most ``depth`` writes are pending (``submit`` waits beyond that), so
    memory stays bounded. The first error a write raises is raised again by the next ``submit`` and
    by ``close``; ``close`` always waits for the writes already handed over, so a run that stops
    on an error or Ctrl-C loses nothing it computed. Use it as a context manager or call ``close``.

    Args:
        threads: writer threads; 0 writes in the caller's thread at ``submit``.
        depth: pending writes at most.
    """

    def __init__(self, threads: int = 1, depth: int = 4):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clipes-write") if threads > 0 else None
        self._slots = threading.BoundedSemaphore(max(depth, 1))
        self._error: BaseException | None = None

    def submit(self, write: Callable[..., None], *args) -> None:
        """Run ``write(*args)`` in the background (now, with ``threads=0``)."""
        self._raise_error()
        if self._pool is None:
            write(*args)
            return
        self._slots.acquire()
        try:
            self._pool.submit(write, *args).add_done_callback(self._finished)
        except BaseException:
            self._slots.release()
            raise

    def _finished(self, future: Future) -> None:
        self._slots.release()
        error = future.exception()
        if error is not None and self._error is None:
            self._error = error

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self, raise_error: bool = True) -> None:
        """Wait for every pending write; then raise the first write error (unless told not to)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if raise_error:
            self._raise_error()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(raise_error=kind is None)


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

"""File writes that never leave a partial file behind.

Every output is written to a hidden temporary name in the destination folder and renamed into
place (``os.replace`` is atomic on POSIX), so a reader or a resumed run sees either the old file,
the complete new file, or nothing. Temporaries of a killed run are removed by
:func:`remove_stale_temporaries`. File hashes (:func:`file_sha256`) that identify inputs in
manifests and checkpoints live here too, below every package that records them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
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


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it was raised from) is a full disk or an exhausted quota."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb"):
    """Open a temporary sibling of ``path`` for writing; rename it to ``path`` on success.

    A full disk (or quota) raises ``OSError(ENOSPC)`` whose ``filename`` is ``path``, so the one
    line a user sees names where the run was writing; the temporary is removed either way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"
    try:
        try:
            with open(tmp, mode) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno in NO_SPACE and exc.filename != str(path):
                raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from None
            raise
    finally:
        with contextlib.suppress(OSError):
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: Path, older_than_s: float = 0.0) -> int:
    """Delete leftovers of killed writers in ``folder``; returns how many were removed.

    A temporary is ``.<name>.tmp-<pid>``: one whose writer is still running on this machine is kept
    (a shard writing the same folder), any other older than ``older_than_s`` is removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed, now = 0, time.time()
    for entry in folder.iterdir():
        if entry.name.startswith(".") and TMP_MARK in entry.name:
            pid = entry.name.rpartition(TMP_MARK)[2]
            if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
                continue
            try:
                if now - entry.stat().st_mtime >= older_than_s:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


def _locked_file(path: Path, operation: int):
    """Open ``path`` (created if missing) and lock it; retry when the file was unlinked by its last
    holder while this process waited (the lock would then guard nothing).

    POSIX record locks (``lockf``), not ``flock``: they belong to this process alone, so the worker
    processes a run forks (data loaders) never keep a killed run's folder locked, and the kernel
    releases them when the process dies.

    Raises:
        BlockingIOError: with ``LOCK_NB``, another process holds a conflicting lock.
    """
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.lockf(handle, operation)
            if path.exists() and os.path.samestat(os.fstat(handle.fileno()), os.stat(path)):
                return handle
        except BaseException:
            handle.close()
            raise
        handle.close()


def _unlink_and_close(handle, path: Path) -> None:
    """Remove a lock file this process holds exclusively, then release it."""
    with contextlib.suppress(OSError):
        path.unlink()
    handle.close()


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Hold ``folder/.lock`` while a shared file (a manifest) is read and rewritten.

    A kernel lock: a process that dies releases it, so no lock is ever stale and no run waits on a
    dead one. The file is removed when the lock is released.
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / ".lock"
    handle = _locked_file(path, fcntl.LOCK_EX)
    try:
        yield
    finally:
        _unlink_and_close(handle, path)


RUN_LOCK = ".run.lock"
_HELD: dict[str, list] = {}  # resolved folder -> [open lock file, holds]: this process's run locks


def _holder_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}


def _describe(record: dict) -> str:
    if not record.get("pid"):
        return "another clipes run"
    where = f" on {record['host']}" if record.get("host") and record["host"] != socket.gethostname() else ""
    return f"pid {record['pid']}{where} (`{record.get('command', '?')}`, since {record.get('started', '?')})"


def _read_record(handle) -> dict:
    handle.seek(0)
    text = handle.read().strip()
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def hold_folder(folder: Path, shared: bool = False, echo: Callable[[str], None] | None = None) -> None:
    """Become the one writer of ``folder`` until :func:`release_folder` or the end of the process.

    Two runs writing one folder would leave a manifest of one setting over files of the other; the
    second is refused at once, naming the running process. ``shared``: shards of one run that write
    the same folder hold it together (each writes its own files); an unsharded run excludes them.
    A lock left by a killed run is a kernel lock its death released: it is taken over at once, with
    a note naming the dead run. Holds are counted per process (one process may hold a folder twice).
    The lock file (``.run.lock``, the holder's pid, host and command) is removed by the last release.

    Raises:
        UserError: another process writes the folder.
    """
    key = str(Path(folder).resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / RUN_LOCK
    try:
        handle = _locked_file(path, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        with open(path, encoding="utf-8") as other:
            record = _read_record(other)
        raise UserError(f"{folder} is being written by {_describe(record)}; wait for it to finish, or write "
                        f"to another folder") from None
    previous = _read_record(handle)
    if previous.get("pid") and previous["pid"] != os.getpid() and not shared and echo is not None:
        echo(f"note: {folder}: took over the lock of a run that ended without releasing it ({_describe(previous)})")
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_holder_record()))
    handle.flush()
    _HELD[key] = [handle, 1]


def release_folder(folder: Path) -> None:
    """End this process's hold on ``folder``; the last holder removes the lock file."""
    key = str(Path(folder).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    handle = _HELD.pop(key)[0]
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the last holder: no shard still writes
    except BlockingIOError:
        handle.close()
        return
    _unlink_and_close(handle, Path(folder) / RUN_LOCK)


@contextlib.contextmanager
def holding(folder: Path, shared: bool = False, echo: Callable[[str], None] | None = None):
    """:func:`hold_folder` for the length of a ``with`` block."""
    hold_folder(folder, shared, echo)
    try:
        yield
    finally:
        release_folder(folder)


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

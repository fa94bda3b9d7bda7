import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from clipes.errors import UserError
from clipes.store.fsutil import (
    RUN_LOCK,
    BackgroundWriter,
    atomic_open,
    folder_lock,
    hold_folder,
    holding,
    no_space,
    release_folder,
    remove_stale_temporaries,
)


def _write(path, text, delay=0.0):
    time.sleep(delay)
    with atomic_open(path, "w") as handle:
        handle.write(text)


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_every_submitted_write_is_done_when_close_returns(tmp_path, threads):
    with BackgroundWriter(threads=threads, depth=2) as writer:
        for i in range(8):
            writer.submit(_write, tmp_path / f"{i}.txt", str(i), 0.01)
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == [f"{i}.txt" for i in range(8)]
    assert [p.read_text() for p in files] == [str(i) for i in range(8)]


def test_a_failed_write_is_raised_and_the_others_are_kept(tmp_path):
    def fail():
        raise OSError("disk full")

    writer = BackgroundWriter()
    writer.submit(_write, tmp_path / "a.txt", "a")
    writer.submit(fail)
    deadline = time.time() + 5
    with pytest.raises(OSError, match="disk full"):
        while time.time() < deadline:  # the next submit after the failure raises it
            writer.submit(_write, tmp_path / "b.txt", "b")
            time.sleep(0.01)
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert (tmp_path / "a.txt").read_text() == "a"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_leaving_on_an_error_waits_for_pending_writes_without_masking_the_error(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with BackgroundWriter() as writer:
            writer.submit(_write, tmp_path / "slow.txt", "done", 0.2)
            raise KeyboardInterrupt
    assert (tmp_path / "slow.txt").read_text() == "done"


def test_submit_waits_when_depth_writes_are_pending(tmp_path):
    release = threading.Event()
    writer = BackgroundWriter(threads=1, depth=2)
    writer.submit(release.wait)  # running
    writer.submit(release.wait)  # queued: two pending
    third = threading.Thread(target=writer.submit, args=(_write, tmp_path / "c.txt", "c"))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # blocked until a slot frees
    release.set()
    third.join(5)
    writer.close()
    assert not third.is_alive() and (tmp_path / "c.txt").read_text() == "c"


def _holder(folder, shared=False):
    """Another process that holds ``folder`` until it is killed (started once it holds it)."""
    code = ("import sys, time\nfrom clipes.store.fsutil import hold_folder\n"
            f"hold_folder({str(folder)!r}, shared={shared})\nprint('held', flush=True)\ntime.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_on_a_held_folder_is_refused_at_once_naming_the_running_process(tmp_path):
    other = _holder(tmp_path)
    try:
        start = time.time()
        with pytest.raises(UserError) as info:
            hold_folder(tmp_path)
        assert time.time() - start < 1.0  # at once, no waiting
        message = str(info.value)
        assert str(tmp_path) in message and f"pid {other.pid}" in message and "being written" in message
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    # the dead owner's lock is taken over at once, with a note naming it
    notes = []
    hold_folder(tmp_path, echo=notes.append)
    try:
        assert len(notes) == 1 and "took over the lock" in notes[0] and f"pid {other.pid}" in notes[0]
        record = json.loads((tmp_path / RUN_LOCK).read_text())
        assert record["pid"] == os.getpid()
    finally:
        release_folder(tmp_path)
    assert not (tmp_path / RUN_LOCK).exists()  # a clean release leaves no lock file behind
    notes.clear()
    with holding(tmp_path, echo=notes.append):
        pass
    assert notes == []


def test_shards_share_a_folder_and_exclude_an_unsharded_run(tmp_path):
    shard = _holder(tmp_path, shared=True)
    try:
        with holding(tmp_path, shared=True):  # a second shard of the same run
            pass
        with pytest.raises(UserError, match="being written"):
            hold_folder(tmp_path)  # an unsharded run waits for the shards to finish
    finally:
        shard.send_signal(signal.SIGKILL)
        shard.wait()
    with holding(tmp_path):
        with holding(tmp_path):  # one process may hold a folder twice (counted)
            pass
        assert json.loads((tmp_path / RUN_LOCK).read_text())["pid"] == os.getpid()


def test_the_manifest_lock_never_waits_on_a_dead_process(tmp_path):
    (tmp_path / ".lock").write_text("12345")  # what a killed run of an older version left
    start = time.time()
    with folder_lock(tmp_path):
        pass
    assert time.time() - start < 1.0
    assert not (tmp_path / ".lock").exists()  # removed on release


def test_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out" / "mask.png"
    with pytest.raises(OSError) as info:
        with atomic_open(target) as handle:
            handle.write(b"part")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert no_space(info.value) and not no_space(ValueError("x"))
    assert list((tmp_path / "out").iterdir()) == []


def test_stale_temporaries_of_live_writers_are_kept(tmp_path):
    (tmp_path / f".a.png.tmp-{os.getppid()}").write_text("a live writer's")  # our parent: alive
    (tmp_path / ".b.png.tmp-999999").write_text("a killed writer's")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == [f".a.png.tmp-{os.getppid()}"]

import threading
import time

import pytest

from clipes.store.fsutil import BackgroundWriter, atomic_open


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

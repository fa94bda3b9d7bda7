"""What every stage runner shares: the device it runs on, its progress bar and its summary.

The runners of every method (``cam_runner``, ``refine_runner``, and those to come) import these
from here rather than from one another.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipes.errors import InputError, UserError
from clipes.store import manifest, maskstore
from clipes.store.fsutil import remove_stale_temporaries


@dataclass
class RunSummary:
    """Outcome of one run: counts, and per-id failures and notes."""

    done: int = 0
    already_done: int = 0
    failed: int = 0
    failures: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    seconds: float = 0.0
    folder: Path | None = None
    stage: str = "cams"

    def line(self) -> str:
        return (f"{self.stage}: {self.done} done, {self.already_done} already done, {self.failed} failed "
                f"-> {self.folder}")


def resolve_device(name: str, env=os.environ) -> torch.device:
    """Check the device exists; under torchrun ``cuda`` means ``cuda:LOCAL_RANK``."""
    if name == "cpu":
        return torch.device("cpu")
    if not str(name).startswith("cuda"):
        raise UserError(f"DEVICE must be cpu, cuda or cuda:N, not {name!r}")
    if not torch.cuda.is_available():
        raise UserError(f"DEVICE={name} but no CUDA device is available (use DEVICE=cpu)")
    if name == "cuda" and "LOCAL_RANK" in env:
        name = f"cuda:{int(env['LOCAL_RANK'])}"
    return torch.device(name)


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "img"):
    """A tqdm bar counting ``unit`` per second (silent when not enabled)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=not enabled, dynamic_ncols=True, desc=desc)


def run_mask_loop(items, folder: Path, stage: str, header: dict, identity: dict, opts, one, echo,
                  name: str, chunk: int = 1, finish=None, failures: dict | None = None) -> RunSummary:
    """The loop of every command that writes one label PNG per image (predict-weclip, masks-weclip,
    masks-weakclip): the folder held for the run, manifest, resume, one failure line per image,
    atomic PNGs.

    ``opts`` needs ``force``, ``progress`` and ``device``.

    ``one(*item)`` gives an image's label map (or, with ``finish``, what ``finish`` turns into one);
    an :class:`InputError` it raises is that image's failure. ``finish(results)`` maps the results of
    up to ``chunk`` items at once, errors left in place (predict's parallel CRF). ``failures``:
    ``{id: reason}`` found before the loop (e.g. a split id without an image), already reported;
    they count and are recorded like the loop's own.
    """
    start = time.time()
    manifest.begin_run(folder, stage, header, manifest.identity_of(identity), force=opts.force, echo=echo)
    summary = RunSummary(folder=folder, stage=name)
    summary.failures.update(failures or {})
    succeeded: set[str] = set()
    bar, error = None, None
    try:
        remove_stale_temporaries(folder, older_than_s=0)
        done = set() if opts.force else maskstore.done_ids(folder)
        todo = [item for item in items if item[0] not in done]
        summary.already_done = len(items) - len(todo)
        succeeded.update({item[0] for item in items} - {item[0] for item in todo})
        bar = progress_bar(len(todo), opts.progress and bool(todo), name)
        for begin in range(0, len(todo), chunk):
            part = todo[begin:begin + chunk]
            results = []
            for item in part:
                try:
                    results.append(one(*item))
                except InputError as exc:
                    results.append(exc)
            for item, label in zip(part, finish(results) if finish else results):
                image_id = item[0]
                if isinstance(label, InputError):
                    summary.failures[image_id] = str(label)
                    bar.write(f"failed {image_id}: {label}")
                else:
                    maskstore.write_mask(maskstore.png_path(folder, image_id), label)
                    succeeded.add(image_id)
                    summary.done += 1
                bar.update(1)
    except BaseException as exc:
        error = exc
        raise
    finally:
        if bar is not None:
            bar.close()
        summary.failed = len(summary.failures)
        summary.seconds = time.time() - start
        try:
            manifest.end_run(folder, {"finished": manifest.now(), "device": opts.device, "done": summary.done,
                                      "already_done": summary.already_done, "failed": summary.failed,
                                      "seconds": round(summary.seconds, 2)},
                             succeeded, summary.failures, {}, len(maskstore.done_ids(folder)))
        except Exception:
            if error is None:  # else the run's own error (e.g. a full disk) is the one to report
                raise
    echo(summary.line())
    return summary

"""What every stage runner shares: the device it runs on, its progress bar and its summary.

The runners of every method (``cam_runner``, ``refine_runner``, and those to come) import these
from here rather than from one another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipes.errors import UserError


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

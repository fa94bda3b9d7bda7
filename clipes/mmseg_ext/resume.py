"""Training runs that resume to the same numbers as an uninterrupted run, on any training command.

mmengine restores the model, optimiser, schedulers and its log on resume, but not random state,
and it replays the whole data stream up to the resumed iteration to skip it. Here every draw is a
function of the run's seed and *where* it happens instead, so nothing random needs saving:

* :class:`KeyedInfiniteSampler`: the shuffled infinite index stream of mmengine's
  ``InfiniteSampler`` (one permutation per epoch, strided over ranks), whose items are keys
  ``epoch * len(dataset) + index``, and which can start at any position (:meth:`skip`).
* :class:`KeyedDataset`: wraps the training set; item ``key`` is sample ``key % len`` with Python's,
  NumPy's and torch's generators seeded from ``(seed, key)`` first, so its augmentation is the same
  whichever worker, process or run draws it. A sample that fails to load is reported once
  (``failed <id>: <reason>``, recorded in ``<work_dir>/failed_samples.jsonl``) and replaced by the
  next loadable one, with the same key.
* :class:`IterationSeedHook`: before every iteration, torch, NumPy and Python are seeded from
  ``(seed, iteration, rank)`` (dropout, drop path).
* :class:`ResumableIterLoop`: mmengine's ``IterBasedTrainLoop`` that starts the sampler at the
  resumed position instead of loading every skipped batch.

:func:`make_resumable` rewrites an iteration-based training config to use all four; every training
command calls it (through :func:`clipes.mmseg_ext.runner.launch_and_resume`).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import random
from pathlib import Path

import numpy as np
import torch
from mmengine.dataset import InfiniteSampler
from mmengine.hooks import Hook
from mmengine.runner import IterBasedTrainLoop
from mmengine.runner.loops import _InfiniteDataloaderIterator
from mmseg.registry import DATA_SAMPLERS, DATASETS, HOOKS, LOOPS

from clipes.errors import InputError

FAILED_SAMPLES = "failed_samples.jsonl"


def derived_seed(*parts) -> int:
    """A 32-bit seed from any parts (the run's seed, a key, an iteration, a rank)."""
    digest = hashlib.sha256(json.dumps([int(p) if isinstance(p, (int, np.integer)) else str(p) for p in parts])
                            .encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@DATA_SAMPLERS.register_module()
class KeyedInfiniteSampler(InfiniteSampler):
    """``InfiniteSampler`` whose items are keys ``epoch * n + index`` and which can skip ahead.

    Epoch e is the permutation ``randperm(n)`` of a generator seeded with ``seed + e`` (or
    ``range(n)`` without shuffling); rank r of w takes positions r, r + w, r + 2w, ... of the
    concatenated epochs.
    """

    def __init__(self, dataset, shuffle: bool = True, seed: int | None = None) -> None:
        super().__init__(dataset, shuffle=shuffle, seed=seed)
        self._start = 0

    def skip(self, count: int) -> None:
        """Start this rank's stream ``count`` items later (the next ``iter()`` does)."""
        self._start = int(count)

    def _infinite_indices(self):
        for epoch in itertools.count():
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed + epoch)
                order = torch.randperm(self.size, generator=generator).tolist()
            else:
                order = range(self.size)
            base = epoch * self.size
            yield from (base + index for index in order)

    def _indices_of_rank(self):
        start = self.rank + self._start * self.world_size
        yield from itertools.islice(self._infinite_indices(), start, None, self.world_size)

    def __iter__(self):
        yield from self._indices_of_rank()


def _sample_name(dataset, index: int) -> str:
    """How a failure line names sample ``index``: the dataset's id, else its image file."""
    if hasattr(dataset, "sample_id"):
        return str(dataset.sample_id(index))
    if hasattr(dataset, "get_data_info"):
        info = dataset.get_data_info(index)
        return str(info.get("image_id") or Path(info.get("img_path", str(index))).stem)
    return str(index)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def record_failure(folder: Path | None, name: str, reason: str) -> bool:
    """Append ``{"id", "reason"}`` to ``folder/failed_samples.jsonl`` unless ``name`` is there already.

    Returns:
        True when this call recorded it (the caller then prints the one line).
    """
    if folder is None:
        return True
    path = Path(folder) / FAILED_SAMPLES
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one worker at a time reads and appends
        handle.seek(0)
        if any(json.loads(line).get("id") == name for line in handle if line.strip()):
            return False
        handle.write(json.dumps({"id": name, "reason": reason}) + "\n")
        handle.flush()
    return True


def read_failures(folder: Path) -> dict[str, str]:
    """``{id: reason}`` recorded by :func:`record_failure` in ``folder`` (empty if none)."""
    path = Path(folder) / FAILED_SAMPLES
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            out[str(entry["id"])] = str(entry["reason"])
    return out


@DATASETS.register_module()
class KeyedDataset(torch.utils.data.Dataset):
    """Item ``key``: sample ``key % len(dataset)`` drawn with generators seeded from ``(seed, key)``.

    Args:
        dataset: the training set (a config dict is built from ``DATASETS``).
        seed: the run's seed.
        work_dir: where failed samples are recorded (None: not recorded).
    """

    def __init__(self, dataset, seed: int = 0, work_dir: str | None = None):
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        self.seed = int(seed)
        self.work_dir = Path(work_dir) if work_dir else None
        self._bad: set[int] = set()
        self.metainfo = getattr(self.dataset, "metainfo", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        size = len(self.dataset)
        index = int(key) % size
        for attempt in range(size):
            candidate = (index + attempt) % size
            if candidate in self._bad:
                continue
            seed_everything(derived_seed(self.seed, "sample", int(key)))
            try:
                return self.dataset[candidate]
            except (InputError, OSError, ValueError, AssertionError, SyntaxError) as exc:  # a bad file
                self._bad.add(candidate)
                name = _sample_name(self.dataset, candidate)
                reason = _short(exc)
                if record_failure(self.work_dir, name, reason):
                    print(f"failed {name}: {reason}", flush=True)
        raise RuntimeError(f"none of the {size} training samples could be loaded")


@HOOKS.register_module()
class IterationSeedHook(Hook):
    """Seed the model's randomness (dropout, drop path) from ``(seed, iteration, rank)`` before each step."""

    priority = "VERY_HIGH"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        from mmengine.dist import get_rank

        seed_everything(derived_seed(self.seed, "iteration", runner.iter, get_rank()))


@LOOPS.register_module()
class ResumableIterLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` that, resumed at iteration k, starts a :class:`KeyedInfiniteSampler`
    at item ``k * batch_size`` of its rank instead of loading the k skipped batches."""

    def run(self):
        self.runner.call_hook("before_train")
        self.runner.call_hook("before_train_epoch")
        if self._iter > 0:
            sampler = self.dataloader.sampler
            if isinstance(sampler, KeyedInfiniteSampler):
                sampler.skip(self._iter * self.dataloader.batch_size)
                self.dataloader_iterator = _InfiniteDataloaderIterator(self.dataloader)
            else:  # another sampler: mmengine's replay
                for _ in range(self._iter):
                    next(self.dataloader_iterator)
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)):
                self.runner.val_loop.run()
        self.runner.call_hook("after_train_epoch")
        self.runner.call_hook("after_train")
        return self.runner.model


def make_resumable(cfg, seed: int | None = None) -> bool:
    """Rewrite an iteration-based training config in place to resume to the uninterrupted numbers.

    Wraps ``train_dataloader.dataset`` in :class:`KeyedDataset`, uses :class:`KeyedInfiniteSampler`
    (keeping the sampler's ``shuffle``), :class:`ResumableIterLoop` and :class:`IterationSeedHook`.

    Returns:
        False (config unchanged) for an epoch-based config.
    """
    train_cfg = cfg.get("train_cfg") or {}
    if train_cfg.get("type") not in ("IterBasedTrainLoop", "ResumableIterLoop") or not cfg.get("train_dataloader"):
        return False
    if seed is None:
        seed = int((cfg.get("randomness") or {}).get("seed") or 0)
    loader = cfg.train_dataloader
    dataset = loader["dataset"]
    if dataset.get("type") != "KeyedDataset":
        loader["dataset"] = dict(type="KeyedDataset", dataset=dataset, seed=seed, work_dir=cfg.get("work_dir"))
    sampler = dict(loader.get("sampler") or {})
    loader["sampler"] = dict(type="KeyedInfiniteSampler", shuffle=sampler.get("shuffle", True), seed=seed)
    train_cfg["type"] = "ResumableIterLoop"
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(h.get("type") == "IterationSeedHook" for h in hooks):
        hooks.append(dict(type="IterationSeedHook", seed=seed))
    cfg.custom_hooks = hooks
    return True



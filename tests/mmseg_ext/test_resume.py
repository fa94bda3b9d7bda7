"""The resumable-training pieces (clipes.mmseg_ext.resume): keyed sampling and seeding, the skip on
resume, and samples that fail when drawn."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import clipes.mmseg_ext  # noqa: F401  (registers the pieces)
from clipes.errors import InputError
from clipes.mmseg_ext.resume import (
    FAILED_SAMPLES,
    KeyedDataset,
    KeyedInfiniteSampler,
    make_resumable,
    read_failures,
)


class Noisy(torch.utils.data.Dataset):
    """Each item is a few draws of every global generator; ``bad`` indices raise like a corrupt image."""

    def __init__(self, size: int = 7, bad=()):
        self.size, self.bad = size, set(bad)

    def __len__(self):
        return self.size

    def sample_id(self, index: int) -> str:
        return f"img{index}"

    def __getitem__(self, index: int):
        if index in self.bad:
            raise InputError(f"cannot decode image img{index}.jpg: image file is truncated")
        return index, float(np.random.rand()), float(torch.rand(1)), __import__("random").random()


def test_the_sampler_is_mmengines_stream_of_keys_and_skips_exactly():
    data = list(range(5))
    sampler = KeyedInfiniteSampler(data, shuffle=True, seed=3)
    keys = list(itertools.islice(iter(sampler), 23))
    assert keys and all(0 <= k < 25 for k in keys)
    for epoch in range(4):  # each epoch is one permutation of the indices, keyed by the epoch
        block = keys[5 * epoch:5 * epoch + 5]
        assert sorted(k % 5 for k in block) == data and all(k // 5 == epoch for k in block)
    sampler.skip(9)  # a resumed run starts where it stopped, without drawing the skipped items
    assert list(itertools.islice(iter(sampler), 14)) == keys[9:23]
    ranks = [KeyedInfiniteSampler(data, seed=3) for _ in range(2)]
    for rank, sampler in enumerate(ranks):
        sampler.rank, sampler.world_size = rank, 2
    assert list(itertools.islice(iter(ranks[1]), 5)) == keys[1:11:2]


def test_a_keyed_item_is_the_same_whichever_process_or_order_draws_it():
    dataset = KeyedDataset(Noisy(), seed=5)
    first = [dataset[k] for k in (3, 10, 3, 24)]
    assert first[0] == first[2]  # the same key, the same draws, after other items in between
    assert first[0] != first[1]  # another key, other draws (same index 3 in another epoch: 10 % 7)
    assert first[1][0] == 3 and first[3][0] == 24 % 7
    assert KeyedDataset(Noisy(), seed=6)[3] != first[0]  # the run's seed matters


def test_a_sample_that_fails_when_drawn_is_reported_once_recorded_and_replaced(tmp_path, capsys):
    dataset = KeyedDataset(Noisy(bad={2}), seed=0, work_dir=str(tmp_path))
    items = [dataset[k] for k in (2, 9, 16, 2)]
    assert [item[0] for item in items] == [3, 3, 3, 3]  # the next loadable sample, same key -> same draws
    assert items[0] == items[3]
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["failed img2: InputError: cannot decode image img2.jpg: image file is truncated"]
    assert read_failures(tmp_path) == {"img2": "InputError: cannot decode image img2.jpg: image file is truncated"}
    # another worker process (a fresh wrapper) finds it recorded and stays silent
    KeyedDataset(Noisy(bad={2}), seed=0, work_dir=str(tmp_path))[2]
    assert capsys.readouterr().out == ""
    assert len((tmp_path / FAILED_SAMPLES).read_text().splitlines()) == 1
    assert json.loads((tmp_path / FAILED_SAMPLES).read_text())["id"] == "img2"
    with pytest.raises(RuntimeError, match="none of the 3 training samples"):
        KeyedDataset(Noisy(3, bad={0, 1, 2}), seed=0)[0]


def test_make_resumable_rewrites_iteration_based_configs_only():
    from mmengine.config import Config

    cfg = Config(dict(train_cfg=dict(type="IterBasedTrainLoop", max_iters=10), randomness=dict(seed=7),
                      work_dir="/tmp/x", train_dataloader=dict(
                          batch_size=2, sampler=dict(type="InfiniteSampler", shuffle=False),
                          dataset=dict(type="PseudoMaskDataset", split="s"))))
    assert make_resumable(cfg)
    assert cfg.train_cfg.type == "ResumableIterLoop"
    assert cfg.train_dataloader.sampler == dict(type="KeyedInfiniteSampler", shuffle=False, seed=7)
    assert cfg.train_dataloader.dataset.type == "KeyedDataset" and cfg.train_dataloader.dataset.seed == 7
    assert cfg.train_dataloader.dataset.dataset.type == "PseudoMaskDataset"
    assert [h["type"] for h in cfg.custom_hooks] == ["IterationSeedHook"]
    assert make_resumable(cfg) and cfg.train_dataloader.dataset.dataset.type == "PseudoMaskDataset"  # idempotent
    epochs = Config(dict(train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=2),
                         train_dataloader=dict(dataset=dict(type="X"))))
    assert not make_resumable(epochs) and epochs.train_dataloader.dataset.type == "X"

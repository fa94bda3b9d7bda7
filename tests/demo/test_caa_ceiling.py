"""demo/caa_ceiling.py: the hand-made affinities it puts in place of the CLIP's attention."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "demo" / "caa_ceiling.py"


@pytest.fixture(scope="module")
def ceiling():
    spec = importlib.util.spec_from_file_location("caa_ceiling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_patch_labels_take_the_majority_label(ceiling):
    gt = np.zeros((4, 6), np.uint8)  # a 2 x 3 grid of 2 x 2 patches
    gt[0:2, 0:2] = [[3, 3], [3, 0]]  # 3 of 4 pixels: class 3
    gt[2:4, 4:6] = 5
    gt[0, 2] = 7  # 1 of 4 pixels: stays background
    assert ceiling.patch_labels(gt, (2, 3)).tolist() == [3, 0, 0, 0, 0, 5]


def test_affinities_are_row_stochastic_and_shaped_as_named(ceiling):
    labels = torch.tensor([1, 1, 0, 0, 0, 2])
    kinds = ceiling.attentions(labels, (2, 3))
    assert sorted(kinds) == ["local", "oracle", "uniform"]
    for attention in kinds.values():
        assert attention.shape == (6, 6)
        assert torch.allclose(attention.sum(dim=1), torch.ones(6))
    oracle, local = kinds["oracle"], kinds["local"]
    assert oracle[0, 1] > 10 * oracle[0, 2]  # same label vs other label
    assert oracle[0, 1] == oracle[0, 0]
    assert local[0, 1] > local[0, 2] > 0  # grid neighbour (distance 1) vs distance 2
    assert torch.allclose(kinds["uniform"], torch.full((6, 6), 1 / 6))


def test_refuses_a_folder_without_a_demo_run(ceiling, tmp_path):
    with pytest.raises(SystemExit) as stop:
        ceiling.main(tmp_path)
    assert str(stop.value).startswith("error:") and str(tmp_path) in str(stop.value)

"""Shared fixtures: the public golden fixture and tiny CLIP checkpoints in OpenAI's format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from clipes.compat import import_clip

# Under pytest-xdist (``make test`` runs two workers) the ``clipes`` subprocesses of the command tests
# run on one thread each, so two workers share the cores instead of fighting over them; the in-process
# tests keep torch's default thread count: the golden tests' tightest bounds (weights after one AdamW
# step within 1e-6, DINO tokens bit for bit) were met with it and some are not with one thread.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(torch.get_num_threads())
    os.environ.setdefault("OMP_NUM_THREADS", "1")

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "public-small"
GOLDEN_IDS = GOLDEN.joinpath("split.txt").read_text().split()


def make_tiny_clip(seed: int = 0, width: int = 128, layers: int = 3, grid: int = 4, patch: int = 16,
                   embed_dim: int = 32, text_width: int = 64, text_layers: int = 2):
    """A random CLIP ViT built by OpenAI's own class (heads = width // 64)."""
    clip = import_clip()
    torch.manual_seed(seed)
    model = clip.model.CLIP(embed_dim, grid * patch, layers, width, patch, 77, 49408, text_width,
                            text_width // 64, text_layers)
    return model.eval()


def save_state_dict(model, path: Path, half: bool = True) -> Path:
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def golden_ids():
    assert GOLDEN_IDS, "the golden split lists no images"
    return GOLDEN_IDS


@pytest.fixture(scope="session")
def golden_clip():
    from clipes.backbones.clip_loader import load_clip

    return load_clip(str(GOLDEN / "clip.pt"))


@pytest.fixture(scope="session")
def golden_debug():
    """Per-id reference debug arrays (ref_debug/<id>.npz) as dicts."""
    out = {}
    for image_id in GOLDEN_IDS:
        with np.load(GOLDEN / "ref_debug" / f"{image_id}.npz", allow_pickle=False) as data:
            out[image_id] = {k: data[k] for k in data.files}
    assert out
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a tiny fp16 OpenAI-format state dict."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return save_state_dict(make_tiny_clip(), path)


def golden_file(folder: Path, name: str) -> Path:
    """``folder/name``, following a link stored as a small text file holding a relative path (how
    some golden sets carry the shared CLIP: ``clip.pt`` -> ``../public-small/clip.pt``)."""
    path = Path(folder) / name
    assert path.exists(), f"golden file missing: {path}"
    if path.is_file() and path.stat().st_size < 1024:
        text = path.read_bytes().strip()
        if text and all(32 <= b < 127 for b in text):
            target = (path.parent / text.decode()).resolve()
            assert target.exists(), f"{path} points to {target}, which is missing"
            return target
    return path


def pytest_collection_modifyitems(config, items):
    """The reduced demo, the longest test by far, first: under ``-n`` workers it then overlaps the rest."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/demo/test_demo.py") else 1)

"""Checkpoints read without trusting them: one line for a file that is not one."""

import pytest
import torch

from clipes.backbones.clip_loader import load_clip
from clipes.errors import UserError
from clipes.store.checkpoints import safe_load, torch_file_problem


@pytest.mark.parametrize("content, reason", [(b"", "it is empty"), (b"a", "it is a text file"),
                                             (b"model weights\n", "it is a text file"),
                                             (b"\x00\x01\x02binary", "neither a zip archive nor a pickle")])
def test_a_file_that_is_not_a_checkpoint_is_one_clear_line(tmp_path, content, reason):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        safe_load(path)
    assert str(path) in str(info.value) and reason in str(info.value)
    with pytest.raises(UserError) as info:
        load_clip(str(path))
    assert str(path) in str(info.value) and reason in str(info.value) and "pop from empty list" not in str(info.value)


def test_real_checkpoints_pass_the_sniff(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "zip.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert torch_file_problem(tmp_path / "zip.pt") is None and torch_file_problem(tmp_path / "legacy.pt") is None
    assert torch.equal(safe_load(tmp_path / "legacy.pt")["w"], torch.zeros(2))

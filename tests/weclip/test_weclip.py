"""WeCLIP's pieces against independent formulas (PAR, losses, labels, selection, schedule,
checkpoint interop); the end-to-end match with the reference is tests/test_weclip_golden.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipes.errors import UserError
from clipes.maps.par import par_refine
from clipes.weclip import losses, rfm, schedule
from clipes.weclip.checkpoint import read_decoder_state
from clipes.weclip.decoder import WeCLIPDecoder, decoder_affinity, decoder_config

GOLDEN_DECODER = Path(__file__).parents[1] / "data" / "weclip-small" / "decoder_init.pt"


def naive_par(images, masks, dilations=(1, 2, 4, 8, 12, 24), iterations=20, w1=0.3, w2=0.01):
    """PAR written per pixel-neighbour with explicit index clamping (float64)."""
    images = F.interpolate(images, size=masks.shape[-2:], mode="bilinear", align_corners=True).double()
    masks = masks.double()
    _, _, h, w = masks.shape
    rows, cols = torch.arange(h), torch.arange(w)
    offsets = [(dy * d, dx * d, d * (math.sqrt(2) if dy and dx else 1.0)) for d in dilations
               for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))]

    def shifted(x, dy, dx):
        return x[..., (rows + dy).clamp(0, h - 1), :][..., (cols + dx).clamp(0, w - 1)]

    neigh = torch.stack([shifted(images, dy, dx) for dy, dx, _ in offsets], dim=2)  # [B, 3, M, H, W]
    colour = (-((neigh - images.unsqueeze(2)).abs() / (neigh.std(dim=2, keepdim=True) + 1e-8) / w1) ** 2).mean(1)
    rho = torch.tensor([r for _, _, r in offsets], dtype=torch.float64)
    pos = torch.softmax(-(rho / (rho.std() + 1e-8) / w1) ** 2, dim=0)
    weights = torch.softmax(colour, dim=1) + w2 * pos.view(1, -1, 1, 1)  # [B, M, H, W]
    for _ in range(iterations):
        masks = sum(shifted(masks, dy, dx) * weights[:, n:n + 1] for n, (dy, dx, _) in enumerate(offsets))
    return masks


def test_par_matches_naive_formula():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 20, 27, generator=g)
    masks = torch.rand(2, 3, 20, 27, generator=g)
    fast = par_refine(images, masks)
    slow = naive_par(images, masks)
    assert fast.shape == (2, 3, 20, 27)
    assert float((fast.double() - slow).abs().max()) < 1e-5
    assert not torch.allclose(fast, masks, atol=1e-3)  # it did change the maps


def test_seg_loss_halves_and_guard():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, 5, generator=g)
    labels = torch.randint(0, 4, (2, 6, 5), generator=g)
    loss, bg, fg = losses.seg_loss(logits, labels)
    ce = F.cross_entropy(logits, labels, reduction="none")
    assert float(bg) == pytest.approx(float(ce[labels == 0].mean()), rel=1e-6)
    assert float(fg) == pytest.approx(float(ce[labels > 0].mean()), rel=1e-6)
    assert float(loss) == pytest.approx((float(bg) + float(fg)) / 2, rel=1e-6)
    # No foreground pixel: the reference gets NaN; here that half is 0 and gradients stay finite.
    background = torch.zeros_like(labels)
    logits.requires_grad_(True)
    loss, bg, fg = losses.seg_loss(logits, background)
    assert float(fg) == 0.0 and math.isfinite(float(loss))
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits.detach(), background)) / 2, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_affinity_labels_against_brute_force():
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, (1, 10 * 16, 7 * 16), generator=g)
    out = losses.affinity_labels(labels, radius=2)
    grid = labels[0, ::16, ::16].reshape(-1)
    assert out.shape == (1, 70, 70)
    for i in range(70):
        for j in range(70):
            near = abs(i // 7 - j // 7) <= 2 and abs(i % 7 - j % 7) <= 2
            expect = (1 if grid[i] == grid[j] else 0) if near else 255
            assert int(out[0, i, j]) == expect
    loss, pos, neg = losses.affinity_loss(torch.full((1, 70, 70), 0.25), out)
    n_pos, n_neg = int((out == 1).sum()), int((out == 0).sum())
    assert (pos, neg) == (n_pos + 1, n_neg + 1) and n_pos > 0 and n_neg > 0
    assert float(loss) == pytest.approx(0.5 * 0.75 * n_pos / (n_pos + 1) + 0.5 * 0.25 * n_neg / (n_neg + 1), rel=1e-6)


def test_block_selection_signed_sum_and_ties():
    n = 4
    # dyadic values: every difference and sum below is exact in float32, so the tie is exact too
    affinity = 0.5 + 0.25 * (torch.arange(n * n).reshape(n, n) % 3 == 0).float()
    blocks = torch.stack([torch.full((n, n), v) for v in (0.125, 0.375, 0.25, 0.25)])
    keep = rfm.select_blocks(blocks, affinity)
    # d_l = sum(A_f) - 16 v; mean at v = 0.25: blocks with v >= 0.25 are kept, the two at the mean included
    assert keep.tolist() == [0.0, 1.0, 1.0, 1.0]
    with_cls = F.pad(blocks, (1, 0, 1, 0))  # [4, T, T]: a CLS row and column in front
    out = rfm.rfm_attention(with_cls, affinity, True, late_blocks=4)
    assert out.selection.tolist() == [0.0, 1.0, 1.0, 1.0]
    expect = (0.375 + 0.25 + 0.25) / (3 + 1e-5) * affinity
    assert torch.allclose(out.attention, expect, atol=1e-6)
    early = rfm.rfm_attention(with_cls, None, False, early_blocks=2)
    assert torch.allclose(early.attention, torch.full((n, n), 0.25)) and early.selection is None


def test_lr_schedule():
    assert schedule.lr_factor(0, 30000) == pytest.approx(1e-6)
    assert schedule.lr_factor(25, 30000) == pytest.approx(1 - 0.5 * (1 - 1e-6))
    assert schedule.lr_factor(50, 30000) == pytest.approx(1 - 50 / 30000)
    assert schedule.lr_factor(15000, 30000) == pytest.approx(0.5)
    assert schedule.BASE_LR * schedule.LR_MULTIPLIER == pytest.approx(2e-3)


def test_decoder_affinity_is_sigmoid_of_dot_products():
    fused = torch.randn(2, 5, 3, 4)
    flat = fused.reshape(2, 5, 12)
    expect = torch.sigmoid(torch.einsum("bei,bej->bij", flat, flat))
    assert torch.allclose(decoder_affinity(fused), expect, atol=1e-6)


def test_reference_checkpoint_forms(tmp_path):
    state, meta, kind = read_decoder_state(GOLDEN_DECODER)
    assert kind == "reference" and meta == {} and len(state) == 84
    config = decoder_config(state)
    assert config == {"clip_width": 128, "branches": 11, "width": 64, "num_classes": 21, "layers": 3, "heads": 8}
    # inside the reference's full model state, with CLIP weights and DDP prefixes
    full = {f"module.{k}": v for k, v in state.items()}
    full["module.encoder.visual.conv1.weight"] = torch.zeros(3)
    torch.save({"model": full}, tmp_path / "full.pth")
    again, _, kind = read_decoder_state(tmp_path / "full.pth")
    assert kind == "reference" and sorted(again) == sorted(state)
    assert all(torch.equal(again[k], state[k]) for k in state)
    WeCLIPDecoder(**config).load_state_dict(again)
    # neither a clipes nor a reference decoder
    torch.save({"state_dict": {"backbone.conv.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a WeCLIP checkpoint"):
        read_decoder_state(tmp_path / "other.pth")
    # a pickle that needs code is refused, never run
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match="safely"):
        read_decoder_state(tmp_path / "evil.pth")
    with pytest.raises(UserError, match="not found"):
        read_decoder_state(tmp_path / "missing.pth")

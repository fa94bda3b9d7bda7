import torch

from clipes.backbones.vit import DenseViT

from conftest import make_tiny_clip


def test_positional_embedding_at_pretrained_grid_is_the_table_rounded_to_fp16():
    model = make_tiny_clip(seed=1, grid=4)
    table = model.visual.positional_embedding
    quirk = DenseViT(model.visual, fp16_pos_embed=True).positional_embedding(4, 4)
    clean = DenseViT(model.visual, fp16_pos_embed=False).positional_embedding(4, 4)
    torch.testing.assert_close(clean, table, rtol=0, atol=1e-6)
    assert torch.equal(quirk, table.half().float())
    wide = DenseViT(model.visual).positional_embedding(2, 6)
    assert wide.shape == (13, 128) and wide.dtype == torch.float32


def test_plain_forward_equals_clip_encode_image_at_pretrained_size():
    model = make_tiny_clip(seed=2, grid=4)
    vit = DenseViT(model.visual, fp16_pos_embed=False)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.encode_image(images)
    torch.testing.assert_close(vit.plain_forward(images), expected, rtol=1e-5, atol=1e-5)


def test_blocks_with_attention_match_plain_blocks_and_rows_sum_to_one():
    model = make_tiny_clip(seed=3)
    vit = DenseViT(model.visual)
    with torch.no_grad():
        x = vit.embed(torch.randn(2, 3, 48, 64))  # 3x4 grid -> 13 tokens
        plain = vit.run_blocks(x, 0, vit.num_layers)
        with_attn, maps = vit.run_blocks_with_attention(x, 0, vit.num_layers)
    assert x.shape == (13, 2, 128) and len(maps) == vit.num_layers
    torch.testing.assert_close(with_attn, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 13), rtol=0, atol=1e-5)

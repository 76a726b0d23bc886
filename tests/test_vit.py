import pytest
import torch

from hieradet.modeling.vit import VIT_SIZES, ViT, vit_kwargs


def _tiny(**kw):
    args = dict(img_size=448, embed_dim=64, depth=4, num_heads=2, global_blocks=(1, 3))
    args.update(kw)
    return ViT(**args)


@pytest.mark.parametrize("hw", [(333, 517), (224, 224), (1024, 1024)])
def test_shapes(hw):
    model = _tiny().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *hw))["last_feat"]
    assert out.shape == (1, 64, hw[0] // 16, hw[1] // 16)
    assert torch.isfinite(out).all()
    assert model.output_shape()["last_feat"].stride == 16


def test_pretrained_grid_is_every_window():
    model = _tiny()
    e = model.pos_embed((64, 64))[0]
    grid = model.pos_embed.window_embed[0].permute(1, 2, 0)
    for y in range(0, 64 - 13, 14):
        for x in range(0, 64 - 13, 14):
            assert torch.equal(e[y : y + 14, x : x + 14], grid)
    bugged = _tiny(pos_embed="interpolate")
    assert not torch.equal(bugged.pos_embed((64, 64))[0, :14, :14], bugged.pos_embed.window_embed[0].permute(1, 2, 0))


def test_relpos_only_on_global_blocks_by_default():
    model = _tiny()
    blocks = sorted({int(n.split(".")[1]) for n, _ in model.named_parameters() if "rel_pos" in n})
    assert blocks == [1, 3]
    assert model.blocks[1].attn.rel_pos_h.shape == (2 * 448 // 16 - 1, 32)
    assert model.blocks[0].window_size == 14 and model.blocks[1].window_size == 0


def test_presets_follow_vitdet():
    assert vit_kwargs("B")["global_blocks"] == (2, 5, 8, 11)
    assert vit_kwargs("L")["global_blocks"] == (5, 11, 17, 23)
    assert vit_kwargs("H")["global_blocks"] == (7, 15, 23, 31)
    assert [VIT_SIZES[s]["embed_dim"] for s in "BLH"] == [768, 1024, 1280]

"""timm's ``hiera_small_abswin_256`` (the only abs-win Hiera with published weights) in HieraDet.

That model widens its stages without a projection (timm's ``use_expand_proj=False``), has layer scale
and an 8x8 window + 16x16 global embedding interpolated with antialiased bicubic at 256 px. The timm
model here has random weights with non-trivial layer scale and embeddings, so every part must match.
"""

import pytest
import torch
import torch.nn.functional as F

from hieradet.checkpoint import convert_state_dict
from hieradet.modeling.blocks import Block
from hieradet.modeling.hieradet import HieraDet
from hieradet.modeling.layout_record import strip_layout_records
from hieradet.modeling.windows import avg_pool_hw

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_small_abswin():
    """timm's hiera_small_abswin_256 with random weights, and its conversion."""
    torch.manual_seed(0)
    ref = timm.create_model("hiera_small_abswin_256", pretrained=False).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(".gamma"):  # layer scale starts at 1e-5, which would hide the blocks
                p.uniform_(0.5, 1.5)
            elif name.startswith("pos_embed"):
                p.normal_(std=0.5)
    result = convert_state_dict(ref.state_dict())
    return ref, result


@pytest.mark.parametrize("hw", [(8, 12), (7, 9)])
def test_avg_pool_hw_is_ceil_mode_avg_pool(hw):
    x = torch.randn(2, *hw, 5)
    ref = F.avg_pool2d(x.permute(0, 3, 1, 2), 2, 2, ceil_mode=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(avg_pool_hw(x, 2), ref)
    assert avg_pool_hw(x, 1) is x


def test_projection_free_block_widens_with_max_and_mean_pool():
    torch.manual_seed(0)
    blk = Block(8, 16, 2, q_stride=2, window_size=4, expand_proj=False).eval()
    assert blk.proj is None and "proj" not in dict(blk.named_parameters())
    assert "expand_proj=False" in repr(blk)
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        # with a zero attention output and a zero MLP the block is its shortcut alone
        blk.attn.proj.weight.zero_()
        blk.attn.proj.bias.zero_()
        blk.mlp.fc2.weight.zero_()
        blk.mlp.fc2.bias.zero_()
        out = blk(x)
    nchw = x.permute(0, 3, 1, 2)  # the raw input, not norm1's output
    expected = torch.cat([F.max_pool2d(nchw, 2), F.avg_pool2d(nchw, 2)], dim=1).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"expand_proj=False widens 8 -> 24 .* dim_out must be 2 \* dim = 16"):
        Block(8, 24, 2, q_stride=2, expand_proj=False)
    assert Block(8, 16, 2, q_stride=2).proj is not None  # the default keeps the projection


def test_converter_reports_the_timm_layout(timm_small_abswin):
    _, result = timm_small_abswin
    kw = result.backbone_kwargs
    assert result.source_format == "timm_hiera_abswin" and result.size == "S"
    assert result.embed_kwargs["expand_proj"] is False and kw["expand_proj"] is False
    assert kw["pos_embed_window"] == 8 and kw["pos_embed_global"] == 16 and kw["pos_embed_antialias"] is True
    assert kw["pretrain_img_size"] == 256 and tuple(kw["window_size"]) == (8, 4, 16, 8)
    assert len(result.folded) == 2 * 16  # ls1 and ls2 of every block
    assert not any(k.endswith(".proj.weight") and k.count(".") == 3 for k in result.state_dict)  # blocks.N.proj


def test_stage_outputs_equal_timm_at_256(timm_small_abswin):
    ref, result = timm_small_abswin
    # timm's classification model: mask units (windows 8, 4) in stages 1-2, global stages 3-4, no relpos,
    # the one-level embedding straight to the 64x64 map
    kw = dict(result.backbone_kwargs, window_size=(8, 4, 0, 0), global_blocks=(), relpos="none")
    ours = HieraDet(**dict(kw, pos_embed="abswin_single")).eval()
    ours.load_state_dict(result.state_dict, strict=True)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        expected = ref.forward_intermediates(x, intermediates_only=True)
        out = ours(x)
        # at the pretraining size the recursive embedding is the same map
        torch.testing.assert_close(ours.pos_embed((64, 64), mode="abswin"), ours.pos_embed((64, 64)), rtol=0, atol=0)
    for name, ref_nchw in zip(["scale2", "scale3", "scale4", "scale5"], expected):
        assert out[name].shape == ref_nchw.shape
        torch.testing.assert_close(out[name], ref_nchw, rtol=0, atol=1e-4)
    # the embedding is not a bystander: plain bicubic (SAM 2's) gives other features
    plain = HieraDet(**dict(kw, pos_embed="abswin_single", pos_embed_antialias=False)).eval()
    plain.load_state_dict(strip_layout_records(result.state_dict))  # another antialiasing on purpose
    with torch.no_grad():
        assert (plain(x)["scale5"] - expected[3]).abs().max() > 1e-3


def test_detection_layout_runs_off_the_pretraining_size(timm_small_abswin):
    ref, result = timm_small_abswin
    ours = HieraDet(**dict(result.backbone_kwargs, img_size=384)).eval()  # windows 8,4,16,8, recursive abswin
    assert ours.pos_embed.mode == "abswin" and ours.global_blocks == (7, 10, 13)
    missing, unexpected = ours.load_state_dict(result.state_dict, strict=False)
    assert not unexpected and missing and all(".attn.rel_pos_" in k for k in missing)  # zero-init, new by design
    with torch.no_grad():
        out = ours(torch.randn(1, 3, 384, 352))
        embed = ours.pos_embed((96, 88))[0]
        timm_tile = ref._pos_embed(torch.zeros(1, 64 * 64, 96)).reshape(64, 64, 96)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "scale2": (1, 96, 96, 88),
        "scale3": (1, 192, 48, 44),
        "scale4": (1, 384, 24, 22),
        "scale5": (1, 768, 12, 11),
    }
    assert all(torch.isfinite(v).all() for v in out.values())
    # every stage-3 window (16 tokens at stride 16 = 64 stride-4 tokens) sees timm's 256 px embedding
    torch.testing.assert_close(embed[:64, :64], timm_tile, rtol=0, atol=1e-6)
    torch.testing.assert_close(embed[64:, 64:], timm_tile[:32, :24], rtol=0, atol=1e-6)

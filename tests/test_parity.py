"""Numerical parity with the reference implementations (random weights, no downloads)."""

import pytest
import torch

from hieradet.checkpoint import official_hiera_to_hieradet, vit_to_abswin_vit
from hieradet.modeling import HieraDet, hieradet_kwargs
from hieradet.modeling.vit import ViT


def test_official_hiera_b_stage_outputs_match():
    hiera = pytest.importorskip("hiera")
    torch.manual_seed(0)
    ref = hiera.hiera_base_224(pretrained=False).eval()
    with torch.no_grad():
        ref.pos_embed.normal_(std=0.02)  # make sure the embedding is not a no-op
    ours = HieraDet(
        **hieradet_kwargs(
            "B",
            window_size=(8, 4, 0, 0),  # original Hiera: mask units in stages 1-2, global in 3-4
            global_blocks=(),
            relpos="none",
            pos_embed_window=56,
            pos_embed_global=None,
        )
    ).eval()
    missing, unexpected = ours.load_state_dict(official_hiera_to_hieradet(ref.state_dict()), strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        _, inter = ref(x, return_intermediates=True)
        out = ours(x)
    for ref_bhwc, name in zip(inter, ["scale2", "scale3", "scale4", "scale5"]):
        torch.testing.assert_close(out[name], ref_bhwc.permute(0, 3, 1, 2), rtol=0, atol=1e-4)


@pytest.mark.parametrize("hw", [(256, 320), (224, 224)])
def test_detectron2_vit_bugged_mode_matches(hw):
    from detectron2.modeling import ViT as D2ViT

    torch.manual_seed(0)
    img_size, depth, dim, heads = 256, 4, 192, 3
    global_blocks = (1, 3)
    ref = D2ViT(
        img_size=img_size,
        patch_size=16,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        window_size=7,
        window_block_indexes=[i for i in range(depth) if i not in global_blocks],
        use_rel_pos=True,
        pretrain_img_size=224,
        pretrain_use_cls_token=True,
    ).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "rel_pos" in name:
                p.normal_(std=0.02)  # relpos is zero-initialised in both: randomise to test it
    ours = ViT(
        img_size=img_size,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        window_size=7,
        global_blocks=global_blocks,
        relpos="all",
        pos_embed="interpolate",
    ).eval()
    missing, unexpected = ours.load_state_dict(vit_to_abswin_vit(ref.state_dict()), strict=True)
    assert not missing and not unexpected
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        expected = ref(x)["last_feat"]
        got = ours(x)["last_feat"]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)

"""Numerical parity with detectron2's ViT (random weights, no downloads).

Parity with the official Hiera (stage outputs at 224 px), timm's abs-win Hiera and SAM 2's trunk goes through the
checkpoint converter and lives in tests/test_checkpoint_parity.py.
"""

import pytest
import torch

from hieradet.checkpoint import vit_to_abswin_vit
from hieradet.modeling.vit import ViT


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

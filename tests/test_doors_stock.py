"""Full-size converted files (random weights in the published formats) loaded by plain detectron2
``DetectionCheckpointer`` into the stock configs: our path's exact backbone, or a CheckpointError that names
``apply_checkpoint_layout``. Never a silent difference."""

import sys
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from hieradet.checkpoint import (
    CheckpointError,
    HieraDetCheckpointer,
    apply_checkpoint_layout,
    build_converted_checkpoint,
    convert_state_dict,
)

ROOT = Path(__file__).resolve().parents[1]
X = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _net(model):
    bb = model.backbone
    return bb.bottom_up if hasattr(bb, "bottom_up") else bb.net


@torch.no_grad()
def _last(model):
    out = _net(model.eval())(X)
    return out[sorted(out)[-1]]


def _doors(config: str, raw: dict, tmp_path, **convert):
    """``(plain model or the CheckpointError, our model)`` for the converted ``raw`` file and the stock ``config``."""
    path = str(tmp_path / "converted.pth")
    torch.save(build_converted_checkpoint(convert_state_dict(raw, **convert)), path)
    cfg = LazyConfig.load(str(ROOT / config))
    apply_checkpoint_layout(cfg, path, log=lambda line: None)
    ours = instantiate(cfg.model)
    HieraDetCheckpointer(ours).load(path)
    plain = instantiate(LazyConfig.load(str(ROOT / config)).model)
    try:
        DetectionCheckpointer(plain).load(path)
    except CheckpointError as e:
        return e, ours
    return plain, ours


def _exact(plain, ours):
    assert not isinstance(plain, Exception), str(plain)
    assert _net(plain).pos_embed.mode == _net(ours).pos_embed.mode
    assert torch.equal(_last(plain), _last(ours))


def _refused(plain, *fields):
    assert isinstance(plain, CheckpointError), "loaded without a message"
    msg = str(plain)
    assert "apply_checkpoint_layout(cfg, checkpoint)" in msg and all(f in msg for f in fields), msg


@pytest.mark.slow
def test_sam2_t_runs_as_sam2(tmp_path):
    sam2_hieradet = pytest.importorskip("sam2.modeling.backbones.hieradet")
    torch.manual_seed(0)
    trunk = sam2_hieradet.Hiera(
        embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
        window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(7, 7),
    ).eval()  # fmt: skip
    with torch.no_grad():
        trunk.pos_embed.normal_()
        trunk.pos_embed_window.normal_()
    raw = {"model": {"image_encoder.trunk." + k: v for k, v in trunk.state_dict().items()}}
    plain, ours = _doors("configs/COCO/mask_rcnn_hieradet_t_100ep.py", raw, tmp_path)
    _exact(plain, ours)
    with torch.no_grad():
        torch.testing.assert_close(_last(plain), trunk(X)[-1], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_official_hiera_t_is_refused_by_plain_loaders(tmp_path):
    hiera = pytest.importorskip("hiera")
    torch.manual_seed(0)
    raw = {"model_state": hiera.Hiera(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2)).state_dict()}
    plain, _ = _doors("configs/COCO/mask_rcnn_hieradet_t_100ep.py", raw, tmp_path)
    _refused(plain, "pos_embed_window=56")


@pytest.mark.slow
def test_timm_abswin_s_is_refused_by_plain_loaders(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    raw = timm.create_model("hiera_small_abswin_256", pretrained=False).state_dict()
    plain, _ = _doors("configs/COCO/mask_rcnn_hieradet_s_100ep.py", raw, tmp_path)
    _refused(plain, "window_size=(8, 4, 16, 8)", "expand_proj=False")


@pytest.mark.slow
def test_mae_vit_b_runs_as_ours(tmp_path):
    vision_transformer = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(0)
    mae = vision_transformer.VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    with torch.no_grad():
        mae.pos_embed.normal_(std=0.5)
    plain, ours = _doors(
        "configs/COCO/mask_rcnn_vitdet_b_100ep.py", {"model": mae.state_dict()}, tmp_path, num_heads=12
    )
    _exact(plain, ours)


@pytest.mark.slow
def test_hivit_t_runs_as_ours(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_hivit_convert import _official_state_dict

    raw = {"model": _official_state_dict(dim=384, depths=(1, 1, 10), heads=6, rpe=False, classifier=False)}
    plain, ours = _doors("projects/HiViT/configs/COCO/mask_rcnn_hivit_t_3x.py", raw, tmp_path, num_heads=6)
    _exact(plain, ours)

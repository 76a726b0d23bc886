"""yacs applies the layout of ``MODEL.WEIGHTS`` as ``apply_checkpoint_layout`` does for a LazyConfig (T-size random
files of the official Hiera and SAM 2 layouts, no downloads)."""

import pytest
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_model

from hieradet.checkpoint import (
    CheckpointError,
    HieraDetCheckpointer,
    apply_checkpoint_layout,
    build_converted_checkpoint,
    convert_state_dict,
    model_layout,
)
from hieradet.config import add_hieradet_config, apply_yacs_checkpoint_layout

STOCK_T = "configs/COCO/mask_rcnn_hieradet_t_100ep.py"


def _yacs(weights="", size="T"):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    add_hieradet_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_hieradet_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["scale2", "scale3", "scale4", "scale5"]
    cfg.MODEL.HIERADET.SIZE = size
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = weights
    return cfg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Raw official Hiera-T and SAM 2-T files (random weights), and the SAM 2 trunk."""
    hiera = pytest.importorskip("hiera")
    sam2_hieradet = pytest.importorskip("sam2.modeling.backbones.hieradet")
    folder = tmp_path_factory.mktemp("yacs")
    torch.manual_seed(0)
    official = hiera.Hiera(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2))
    torch.save({"model_state": official.state_dict()}, folder / "hiera_tiny_224.pth")
    trunk = sam2_hieradet.Hiera(
        embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
        window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(7, 7),
    ).eval()  # fmt: skip
    with torch.no_grad():
        trunk.pos_embed.normal_()
        trunk.pos_embed_window.normal_()
    torch.save({"model": {"image_encoder.trunk." + k: v for k, v in trunk.state_dict().items()}}, folder / "sam2.pt")
    return str(folder / "hiera_tiny_224.pth"), str(folder / "sam2.pt"), trunk


def _lazy_layout(path):
    cfg = LazyConfig.load(STOCK_T)
    apply_checkpoint_layout(cfg, path, log=lambda line: None)
    return model_layout("HieraDet", instantiate(cfg.model.backbone.bottom_up))[0]


def test_official_hiera_t_sets_the_full_grid_like_the_lazyconfig_path(files, capsys):
    official, _, _ = files
    cfg = _yacs(official)
    changes = apply_yacs_checkpoint_layout(cfg)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [c[0] for c in changes] == [
        "MODEL.HIERADET.POS_EMBED",
        "MODEL.HIERADET.POS_EMBED_WINDOW",
        "MODEL.HIERADET.POS_EMBED_GLOBAL",
    ]
    assert len(lines) == 3 and "POS_EMBED_WINDOW: 8 -> 56" in lines[1] and "POS_EMBED_GLOBAL: 7 -> 0" in lines[2]
    assert (cfg.MODEL.HIERADET.POS_EMBED, cfg.MODEL.HIERADET.POS_EMBED_WINDOW) == ("abswin", 56)
    # the builder applies it by itself from MODEL.WEIGHTS (to a copy: the user's config is left as it was)
    frozen = _yacs(official)
    frozen.freeze()
    net = BACKBONE_REGISTRY.get("build_hieradet_backbone")(frozen, ShapeSpec(channels=3))
    assert frozen.MODEL.HIERADET.POS_EMBED_WINDOW == 8
    assert model_layout("HieraDet", net)[0] == _lazy_layout(official)


def test_sam2_t_through_build_model_and_a_checkpointer_is_the_sam2_trunk(files, capsys):
    _, sam2, trunk = files
    cfg = _yacs(sam2)
    model = build_model(cfg).eval()  # what DefaultTrainer / DefaultPredictor do
    out = capsys.readouterr().out
    assert "POS_EMBED: 'auto' -> 'abswin_single'" in out and "PRETRAIN_IMG_SIZE: 224 -> 1024" in out
    assert out.count("[checkpoint layout]") == 2
    net = model.backbone.bottom_up
    assert model_layout("HieraDet", net)[0] == _lazy_layout(sam2)
    HieraDetCheckpointer(model).load(sam2)  # a raw file: converted on load
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net(x)["scale5"], trunk(x)[-1], rtol=0, atol=1e-4)


def test_yacs_refuses_another_size_a_contradicted_trained_mode_and_keeps_pkl(files, tmp_path):
    official, sam2, _ = files
    with pytest.raises(CheckpointError, match=r"size mismatch.*SIZE = 'T'.*SIZE='S'"):
        apply_yacs_checkpoint_layout(_yacs(official, size="S"))
    # a training checkpoint (converted SAM 2-T, run in its mode) binds its mode
    converted = tmp_path / "sam2_t.pth"
    torch.save(build_converted_checkpoint(convert_state_dict(torch.load(sam2, weights_only=True))), converted)
    model = build_model(_yacs(str(converted)))
    DetectionCheckpointer(model, str(tmp_path)).save("model_final")
    final = str(tmp_path / "model_final.pth")
    cfg = _yacs(final)
    cfg.MODEL.HIERADET.POS_EMBED = "abswin"
    with pytest.raises(CheckpointError, match=r"trained with pos_embed='abswin_single'.*POS_EMBED='abswin'"):
        apply_yacs_checkpoint_layout(cfg)
    cfg = _yacs(final)
    assert [c[2] for c in apply_yacs_checkpoint_layout(cfg, log=lambda line: None)] == ["abswin_single", 1024]
    pkl = _yacs("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    assert apply_yacs_checkpoint_layout(pkl) == [] and pkl.MODEL.HIERADET.POS_EMBED == "auto"
    with pytest.raises(FileNotFoundError):
        apply_yacs_checkpoint_layout(_yacs(str(tmp_path / "missing.pth")))
